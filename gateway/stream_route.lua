-- Stream routing of the LLM Ops gateway (Envoy HTTP Lua filter, placed after the
-- buffer filter and before grpc_json_transcoder).
--
-- A REST POST to one of the chat/completion paths whose JSON body has a top-level
-- "stream": true is sent to the same path + ":stream", which the transcoder maps to
-- ChatStream / CompleteStream (body: "request") and answers as server-sent events.
-- Anything else (no "stream", "stream": false, other paths, native gRPC) is untouched.
--
-- The body is read with body(): the buffer filter before this one already holds the
-- whole body and has answered 413 beyond max_body_bytes, so this never buffers more.
-- Only the paths in STREAMABLE are ever read; every other request streams through.
-- STREAMABLE (Lua patterns) is defined above this file by shared/gateway.py: the
-- paths P whose P:stream is an HTTP binding of a server-streaming method.

local function starts_with(s, p)
  return s ~= nil and s:sub(1, #p) == p
end

local function streamable(path)
  for _, pattern in ipairs(STREAMABLE) do
    if path:find(pattern) then
      return true
    end
  end
  return false
end

-- Whether the JSON object in s has a top-level key "stream" whose value is true.
-- A small scanner: it skips string literals (escapes included) and tracks the
-- nesting depth, so "stream" inside a string or in a nested object does not count.
-- Limits: the key must be spelled plainly ("stream", not "\u0073tream"), and the
-- last top-level "stream" wins, as in the protobuf JSON parser. Invalid JSON is left
-- to the transcoder (400).
local function stream_requested(s)
  local depth, i, result = 0, 1, false
  while true do
    local k = s:find('["{}%[%]]', i)
    if k == nil then
      return result
    end
    local c = s:sub(k, k)
    if c == '"' then
      local j = k + 1
      while true do -- to the closing quote, stepping over escapes
        local q = s:find('["\\]', j)
        if q == nil then
          return result
        end
        if s:sub(q, q) == "\\" then
          j = q + 2
        else
          j = q
          break
        end
      end
      if depth == 1 and j - k == 7 and s:sub(k + 1, j - 1) == "stream" then
        local value = s:match("^%s*:%s*(%a+)", j + 1)
        if value ~= nil then -- a key (a string value is never followed by ':')
          result = (value == "true")
        end
      end
      i = j + 1
    elseif c == "{" or c == "[" then
      depth = depth + 1
      i = k + 1
    else
      depth = depth - 1
      i = k + 1
    end
  end
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  if headers:get(":method") ~= "POST" or starts_with(headers:get("content-type"), "application/grpc") then
    return
  end
  local path = headers:get(":path") or ""
  local bare, query = path:match("^([^?]*)(.*)$")
  if not streamable(bare) then
    return
  end
  local body = request_handle:body()
  if body == nil or body:length() == 0 then
    return
  end
  if not stream_requested(body:getBytes(0, body:length())) then
    return
  end
  -- The headers object fetched before body() is dead after it: fetch it again.
  request_handle:headers():replace(":path", bare .. ":stream" .. query)
  -- The transcoder clears the route cache again when it rewrites :path to the gRPC
  -- method; clearing here keeps any filter in between from seeing a stale route.
  request_handle:clearRouteCache()
end
