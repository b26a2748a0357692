-- Body checks of the LLM Ops gateway (Envoy HTTP Lua filter, placed after the buffer
-- filter and stream_route.lua, just before grpc_json_transcoder).
--
-- The transcoder drops a JSON field its message does not define and fills a missing one
-- with its zero value, so {"minReplica": 3} deployed one replica and a body without
-- "allocation" started an experiment at 0 %. Envoy 1.40 has no option against either
-- (request_validation_options covers methods, query parameters and path collisions only).
-- This filter reads the body of every REST binding whose body is a message and answers
-- 400 before the transcoder when
--   * a key names no field of the message it sits in, at any depth (nested messages,
--     repeated and map values of message type): "unknown field ... (did you mean ...?)";
--   * a field marked REQUIRED that the service cannot see missing (a number or a bool
--     without presence, whose zero is a valid value) is absent or null: "<field> is required".
-- The connection manager's local_reply_config gives the 400 the envelope (OpenAI's shape on
-- /v1, whose bodies are google.api.HttpBody and never read here).
--
-- ROUTES ({verb, Lua pattern of the path, message, {fields bound by the path}}) and MESSAGES
-- (message -> {fields = {name -> {shown name, message or false, "one" | "list" | "map"}},
-- names = {...}, required = {...}}) are defined above this file by shared/gateway.py from the
-- protos' HTTP bindings and descriptors. Both a field's JSON name and its proto name are keys,
-- as the transcoder accepts both. Well-known types (Struct, Value, Timestamp, ...) are not read.
--
-- The reader follows the JSON the transcoder's parser takes, which is more than JSON: keys
-- in single quotes or bare ([A-Za-z_$][A-Za-z0-9_$]*), strings in single quotes, a comma
-- before } or ], and \v and \f as blanks. Whatever it cannot read (malformed JSON, a key
-- that is not UTF-8) it leaves to the transcoder, which answers 400 for it.

local MAX_NAMED = 5      -- unknown fields named in one answer
local MAX_SHOWN = 64     -- bytes of a field's path shown

local function starts_with(s, p)
  return s ~= nil and s:sub(1, #p) == p
end

-- Index of the next non-blank byte at or after i (nil at the end).
local function blank_end(s, i)
  return s:find("[^%s]", i)
end

-- s[i] is a quote: the index of the quote that closes the string.
local function string_end(s, i)
  local quote = s:sub(i, i) == "'" and "['\\]" or '["\\]'
  local j = i + 1
  while true do
    local q = s:find(quote, j)
    if q == nil then
      return nil
    end
    if s:byte(q) == 92 then -- a backslash: the next byte is escaped
      j = q + 2
    else
      return q
    end
  end
end

local ESCAPES = { b = "\b", f = "\f", n = "\n", r = "\r", t = "\t" }

local function utf8_char(cp)
  if cp < 0x80 then
    return string.char(cp)
  elseif cp < 0x800 then
    return string.char(0xC0 + math.floor(cp / 0x40), 0x80 + cp % 0x40)
  elseif cp < 0x10000 then
    return string.char(0xE0 + math.floor(cp / 0x1000), 0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
  end
  return string.char(0xF0 + math.floor(cp / 0x40000), 0x80 + math.floor(cp / 0x1000) % 0x40,
    0x80 + math.floor(cp / 0x40) % 0x40, 0x80 + cp % 0x40)
end

-- The text of a string literal's inside, escapes decoded (\uXXXX, surrogate pairs
-- included); nil for a \u that is not followed by four hex digits.
local function unescape(raw)
  if not raw:find("\\", 1, true) then
    return raw
  end
  local out, i = {}, 1
  while true do
    local k = raw:find("\\", i, true)
    if k == nil then
      out[#out + 1] = raw:sub(i)
      return table.concat(out)
    end
    out[#out + 1] = raw:sub(i, k - 1)
    local c = raw:sub(k + 1, k + 1)
    if c == "u" then
      local hex = raw:match("^%x%x%x%x", k + 2)
      if hex == nil then
        return nil
      end
      local cp = tonumber(hex, 16)
      i = k + 6
      local low = cp >= 0xD800 and cp <= 0xDBFF and raw:match("^\\u([dD][c-fC-F]%x%x)", i)
      if low then
        cp = 0x10000 + (cp - 0xD800) * 0x400 + (tonumber(low, 16) - 0xDC00)
        i = i + 6
      end
      out[#out + 1] = utf8_char(cp)
    else
      out[#out + 1] = ESCAPES[c] or c
      i = k + 2
    end
  end
end

-- The index just past the value that starts at i (nil if there is none). Objects and
-- arrays are skipped by counting brackets outside strings: no recursion, whatever the depth.
local function skip_value(s, i)
  local c = s:byte(i)
  if c == 34 or c == 39 then -- " or '
    local e = string_end(s, i)
    return e and e + 1
  elseif c ~= 123 and c ~= 91 then -- a number, true, false, null (checked by the transcoder)
    local _, e = s:find("^[%w%.%+%-]+", i)
    return e and e + 1
  end
  local depth, j = 0, i
  while true do
    local k = s:find("[\"'{}%[%]]", j)
    if k == nil then
      return nil
    end
    c = s:byte(k)
    if c == 34 or c == 39 then
      local e = string_end(s, k)
      if e == nil then
        return nil
      end
      j = e + 1
    elseif c == 123 or c == 91 then
      depth = depth + 1
      j = k + 1
    else
      depth = depth - 1
      j = k + 1
      if depth == 0 then
        return j
      end
    end
  end
end

-- The object key at i: its text and the index past it; nil if there is no key there.
local function read_key(s, i)
  local c = s:byte(i)
  if c == 34 or c == 39 then
    local e = string_end(s, i)
    if e == nil then
      return nil
    end
    local key = unescape(s:sub(i + 1, e - 1))
    return key, key and e + 1
  end
  local _, e = s:find("^[%a_$][%w_$]*", i)
  if e == nil then
    return nil
  end
  return s:sub(i, e), e + 1
end

-- After a value inside an object or array: the index of the next entry or element, or of
-- the closing byte (a comma right before it is taken, as the transcoder does); nil if
-- neither follows.
local function after_value(s, i, close)
  i = blank_end(s, i)
  if i == nil then
    return nil
  end
  local c = s:byte(i)
  if c == 44 then -- ,
    return blank_end(s, i + 1)
  end
  return c == close and i or nil
end

-- Edit distance of two short strings: insertions, deletions, substitutions and swaps of
-- two neighbours ("nmae") count one each (optimal string alignment).
local function distance(a, b)
  local before, previous = {}, {}
  for j = 0, #b do
    previous[j] = j
  end
  for i = 1, #a do
    local current = { [0] = i }
    for j = 1, #b do
      local cost = a:byte(i) == b:byte(j) and 0 or 1
      current[j] = math.min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + cost)
      if i > 1 and j > 1 and a:byte(i) == b:byte(j - 1) and a:byte(i - 1) == b:byte(j) then
        current[j] = math.min(current[j], before[j - 2] + 1)
      end
    end
    before, previous = previous, current
  end
  return previous[#b]
end

-- The known name closest to key, if one is close: the same but for case, a few letters off
-- (one in three at most: "rol" is role, "x" is nothing), or a prefix of at least four ("autoscale").
local function suggestion(key, names)
  if #key > MAX_SHOWN then
    return nil
  end
  local lower, best, best_d = key:lower(), nil, nil
  for _, name in ipairs(names) do
    local candidate = name:lower()
    local d = distance(lower, candidate)
    if #lower >= 4 and starts_with(candidate, lower) then
      d = math.min(d, 1)
    end
    if d <= math.floor(#key / 3) and (best_d == nil or d < best_d) then
      best, best_d = name, d
    end
  end
  return best
end

local UTF8 = {
  "^[%z\1-\127]", "^[\194-\223][\128-\191]", "^\224[\160-\191][\128-\191]",
  "^[\225-\236\238\239][\128-\191][\128-\191]", "^\237[\128-\159][\128-\191]",
  "^\240[\144-\191][\128-\191][\128-\191]", "^[\241-\243][\128-\191][\128-\191][\128-\191]",
  "^\244[\128-\143][\128-\191][\128-\191]",
}

local function valid_utf8(s)
  if not s:find("[\128-\255]") then
    return true -- ASCII
  end
  local i = 1
  while i <= #s do
    local e
    for _, pattern in ipairs(UTF8) do
      local _, x = s:find(pattern, i)
      if x then
        e = x
        break
      end
    end
    if e == nil then
      return false
    end
    i = e + 1
  end
  return true
end

local function shown(path)
  if #path <= MAX_SHOWN then
    return path
  end
  local n = MAX_SHOWN -- cut before a character, not inside one (a UTF-8 continuation byte)
  while n > 0 and path:byte(n + 1) >= 0x80 and path:byte(n + 1) < 0xC0 do
    n = n - 1
  end
  return path:sub(1, n) .. "..."
end

-- A problem is named by its path: "autoscalePolicy.cpu", "messages[1].nmae". Paths are
-- built only for what is named (a list of many messages costs no string per element):
-- an object's path is its parent's path, then [n] when it is the n-th element of a list.
local function path_of(path, n)
  return n and (path .. "[" .. n .. "]") or path
end

local function add_unknown(problems, path, key, names)
  problems.count = problems.count + 1
  if #problems.unknown < MAX_NAMED then
    local named = '"' .. shown(path == "" and key or path .. "." .. key) .. '"'
    local close = suggestion(key, names)
    problems.unknown[#problems.unknown + 1] = close and (named .. ' (did you mean "' .. close .. '"?)') or named
  end
end

-- Reads the object at s[i] as the message type (the n-th element of the list at path, or
-- the value at path when n is nil); adds what is wrong to problems. Returns the index past
-- the object, or nil when the JSON cannot be read (the transcoder's to refuse).
local check_message

-- The value at s[i] of a field: a message (or a list or map of them) is read as one.
local function check_value(s, i, field, path, problems)
  local message, shape, c = field[2], field[3], s:byte(i)
  if not message or (c ~= 123 and c ~= 91) then
    return skip_value(s, i)
  elseif c == 91 and shape == "list" then
    local n = 0
    i = blank_end(s, i + 1)
    while i ~= nil and s:byte(i) ~= 93 do -- ]
      if s:byte(i) == 123 then
        i = check_message(s, i, message, path, n, problems)
      else
        i = skip_value(s, i)
      end
      n = n + 1
      i = i and after_value(s, i, 93)
    end
    return i and i + 1
  elseif c == 123 and shape == "map" then -- any keys; the values are messages
    i = blank_end(s, i + 1)
    while i ~= nil and s:byte(i) ~= 125 do -- }
      local key, after = read_key(s, i)
      i = key and blank_end(s, after)
      if i == nil or s:byte(i) ~= 58 then -- :
        return nil
      end
      i = blank_end(s, i + 1)
      if i ~= nil and s:byte(i) == 123 then
        i = check_message(s, i, message, path .. "." .. key, nil, problems)
      elseif i ~= nil then
        i = skip_value(s, i)
      end
      i = i and after_value(s, i, 125)
    end
    return i and i + 1
  elseif c == 123 then -- one message (a list field given one object is read as its element)
    return check_message(s, i, message, path, nil, problems)
  end
  return skip_value(s, i)
end

check_message = function(s, i, type_name, path, n, problems, bound)
  local message = MESSAGES[type_name]
  local fields, required = message.fields, message.required
  local present = #required > 0 and {} or nil
  i = blank_end(s, i + 1)
  while i ~= nil and s:byte(i) ~= 125 do -- }
    local key, after = read_key(s, i)
    i = key and blank_end(s, after)
    if i == nil or s:byte(i) ~= 58 then -- :
      return nil
    end
    i = blank_end(s, i + 1)
    if i == nil then
      return nil
    end
    local field = fields[key]
    if field == nil then
      if not valid_utf8(key) then
        return nil -- not UTF-8: the transcoder refuses the body
      end
      add_unknown(problems, path_of(path, n), key, message.names)
      i = skip_value(s, i)
    else
      if present and s:sub(i, i + 3) ~= "null" then
        present[field[1]] = true
      end
      local inner = field[2] and path_of(path, n)
      i = check_value(s, i, field, inner and (inner == "" and key or inner .. "." .. key) or "", problems)
    end
    i = i and after_value(s, i, 125)
  end
  if i == nil then
    return nil
  end
  for _, name in ipairs(required) do
    if not present[name] and not (bound and bound[name]) then
      local here = path_of(path, n)
      problems.missing[#problems.missing + 1] = here == "" and name or here .. "." .. name
    end
  end
  return i + 1
end

-- What is wrong with body as the message type, as the 400's message; nil when nothing is
-- (or when the body is not a JSON object: the transcoder answers that).
local function body_problem(body, type_name, bound)
  local i = blank_end(body, 1)
  if i == nil or body:byte(i) ~= 123 then
    return nil
  end
  local problems = { unknown = {}, count = 0, missing = {} }
  if check_message(body, i, type_name, "", nil, problems, bound) == nil then
    return nil
  end
  if problems.count > 0 then
    local more = problems.count > #problems.unknown
        and (", and " .. (problems.count - #problems.unknown) .. " more") or ""
    return (problems.count == 1 and "unknown field" or "unknown fields") .. " in the request body: "
        .. table.concat(problems.unknown, ", ") .. more
  end
  if #problems.missing > 0 then
    return table.concat(problems.missing, ", ") .. " is required"
  end
  return nil
end

-- The route whose body the transcoder parses for this request, as the transcoder matches
-- paths: without the query, trailing slashes dropped, but then no custom verb (":stream/"
-- is a literal segment to it, and no route).
local function route_of(verb, path)
  local bare = path:match("^[^?]*")
  local trimmed = bare:gsub("/+$", "")
  for _, route in ipairs(ROUTES) do
    if route[1] == verb and trimmed:find(route[2]) and not (trimmed ~= bare and route[2]:find("%:", 1, true)) then
      return route
    end
  end
  return nil
end

function envoy_on_request(request_handle)
  local headers = request_handle:headers()
  if starts_with(headers:get("content-type"), "application/grpc") then
    return
  end
  local route = route_of(headers:get(":method") or "", headers:get(":path") or "")
  if route == nil then
    return
  end
  local body = request_handle:body()
  if body == nil or body:length() == 0 then
    return
  end
  local problem = body_problem(body:getBytes(0, body:length()), route[3], route[4])
  if problem ~= nil then
    request_handle:respond({ [":status"] = "400" }, problem)
  end
end
