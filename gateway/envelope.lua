-- REST envelope of the LLM Ops gateway (Envoy HTTP Lua filter, placed before
-- grpc_json_transcoder so that it sees transcoded JSON on the way back).
--
-- For requests under /llm-ops/v1 that are not native gRPC:
--   * 200 + x-llmops-message (gRPC initial metadata from the service):
--       {"status":"success","message":<header>,"data":<transcoded body>}
--   * a gRPC error (convert_grpc_status: true makes the transcoder write it as a
--     JSON google.rpc.Status {"code":N,"message":"..."}, message percent-decoded):
--       {"status":"error","message":<message>,"data":null} with our HTTP status
--   * anything else (raw methods, Envoy local replies already shaped by the HTTP
--     connection manager's local_reply_config): body untouched.
-- For the OpenAI-compatible surface under /v1 (not native gRPC):
--   * success: the body as transcoded, never buffered;
--   * a gRPC error: {"error":{"message":...,"type":...,"code":<status name>}} with the
--     same HTTP status table.
-- Every such response loses the gRPC headers (x-llmops-message included).
-- Native gRPC and text/event-stream responses are never buffered: a stream only
-- loses those headers (its trailers are left alone).

local META_NS = "llmops.gateway"
local PREFIX = "/llm-ops/v1/"
local OPENAI_PREFIX = "/v1/"

-- HTTP_STATUS (gRPC status code -> HTTP status), CODE_NAME (code -> OpenAI error
-- "code": the status name, lowercased) and OPENAI_TYPE (code -> OpenAI error "type")
-- are defined above this file by shared/gateway.py, from the platform's one status
-- table (shared/errors.py STATUS_TABLE).

local function json_string(s)
  s = s:gsub('[%c"\\]', function(c)
    if c == '"' then return '\\"'
    elseif c == "\\" then return "\\\\"
    elseif c == "\n" then return "\\n"
    elseif c == "\r" then return "\\r"
    elseif c == "\t" then return "\\t"
    else return string.format("\\u%04x", c:byte()) end
  end)
  return '"' .. s .. '"'
end

-- The transcoder writes a gRPC error (convert_grpc_status) as google.rpc.Status
-- JSON: {"code":5,"message":"...","details":[...]}, message already JSON-escaped.
-- Returns the code and the raw JSON string literal of the message.
local function status_fields(raw)
  local code = tonumber(raw:match('^%s*{%s*"code"%s*:%s*(%d+)'))
  if code == nil then
    return nil, nil
  end
  local _, e = raw:find('"message"%s*:%s*"')
  if e == nil then
    return code, '""'
  end
  local j = e + 1
  while true do -- to the closing quote, stepping over escapes
    local k = raw:find('["\\]', j)
    if k == nil then
      return code, '""'
    end
    if raw:sub(k, k) == "\\" then
      j = k + 2
    else
      return code, raw:sub(e, k)
    end
  end
end

local function starts_with(s, p)
  return s ~= nil and s:sub(1, #p) == p
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  if starts_with(headers:get("content-type"), "application/grpc") then
    return
  end
  local path = headers:get(":path")
  if starts_with(path, PREFIX) then
    request_handle:streamInfo():dynamicMetadata():set(META_NS, "envelope", true)
  elseif starts_with(path, OPENAI_PREFIX) then
    request_handle:streamInfo():dynamicMetadata():set(META_NS, "openai", true)
  end
end

-- Response headers that mean nothing to a REST client.
local GRPC_HEADERS = {
  "x-llmops-message", "x-llmops-param", "grpc-status", "grpc-message", "grpc-status-details-bin",
  "grpc-accept-encoding", "grpc-encoding",
}

function envoy_on_response(response_handle)
  local md = response_handle:streamInfo():dynamicMetadata():get(META_NS)
  if md == nil or not (md["envelope"] or md["openai"]) then
    return -- native gRPC, or outside /llm-ops/v1 and /v1
  end
  local openai = not md["envelope"]
  local headers = response_handle:headers()
  if starts_with(headers:get("content-type"), "text/event-stream") then
    -- Streaming: headers only, never body() or trailers(), which would hold the
    -- events back. An HTTP/2 client still gets grpc-status/grpc-message trailers.
    for _, name in ipairs(GRPC_HEADERS) do
      headers:remove(name)
    end
    return
  end

  local status = headers:get(":status")
  local info = response_handle:streamInfo():dynamicMetadata()
  -- The access log cannot see grpc-status once it is removed: keep it in metadata.
  local upstream_grpc_status = tonumber(headers:get("grpc-status") or "")
  if status == "200" and upstream_grpc_status ~= nil then
    info:set(META_NS, "grpc_status", upstream_grpc_status)
  end
  local message = headers:get("x-llmops-message")
  local param = headers:get("x-llmops-param") -- the field an error is about (OpenAI's "param")
  for _, name in ipairs(GRPC_HEADERS) do
    headers:remove(name)
  end
  if status == "200" then
    if message == nil or openai then
      return -- raw method or /v1: body as the transcoder wrote it
    end
    -- Change headers before body(): this wrapper is dead once the script yields.
    headers:replace("content-type", "application/json")
  end

  local body = response_handle:body(true)
  if body == nil then
    return
  end
  local raw = body:length() > 0 and body:getBytes(0, body:length()) or ""

  if status == "200" then
    local data = raw ~= "" and raw or "null"
    body:setBytes('{"status":"success","message":' .. json_string(message) .. ',"data":' .. data .. "}")
  else
    -- A gRPC error, as the transcoder writes it with convert_grpc_status:
    -- {"code":5,"message":"...","details":[]}. Anything else (Envoy's local replies,
    -- already shaped by local_reply_config) is left as it is.
    local code, text = status_fields(raw)
    if code == nil then
      return
    end
    response_handle:streamInfo():dynamicMetadata():set(META_NS, "grpc_status", code)
    local http_status = HTTP_STATUS[code] or 500
    local h = response_handle:headers()
    h:replace(":status", tostring(http_status))
    h:replace("content-type", "application/json")
    if openai then
      local kind = OPENAI_TYPE[code] or "server_error"
      body:setBytes('{"error":{"message":' .. text .. ',"type":"' .. kind .. '","param":'
        .. (param and json_string(param) or "null") .. ',"code":"' .. (CODE_NAME[code] or "unknown") .. '"}}')
    else
      body:setBytes('{"status":"error","message":' .. text .. ',"data":null}')
    end
  end

  -- HTTP/2 clients would otherwise still get grpc-status / grpc-message as trailers.
  local trailers = response_handle:trailers()
  if trailers ~= nil then
    for _, name in ipairs(GRPC_HEADERS) do
      trailers:remove(name)
    end
  end
end
