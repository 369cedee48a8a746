-- Wireshark dissector for the Paywire wire protocol (docs/protocol.md).
--
-- Load it with `wireshark -X lua_script:docs/wireshark/paywire.lua` (or copy it into your
-- personal Lua plugins folder); see docs/wireshark/README.md for tshark and the TLS key log.
--
-- What it shows: every frame's 16-byte header (length, version, type, flags, request id),
-- its msgpack body decoded to a tree of keys and values (a REQUEST's `args` bin unpacked to
-- the map it holds, so `bank.batch` shows each inner operation), error codes by name, and
-- expert warnings for header defects the spec makes a receiver refuse. Frames split across
-- TCP segments or TLS records are reassembled, and several frames in one segment are shown
-- one after another.
--
-- Where: TLS-decrypted application data on the `tls_ports` preference (default: the hub's
-- and a bank node's default ports), plain TCP on the `tcp_ports` preference (the plaintext
-- lab mode), and a heuristic on TCP and TLS that recognises a HELLO (or any frame whose
-- header is valid and whose body starts with a msgpack map) on any port.
--
-- The tables between the GENERATED markers come from the Python protocol package:
--   python -m protocol.wireshark --write docs/wireshark/paywire.lua docs/wireshark/README.md
-- and tests/test_wireshark.py fails when they are stale. Edit the code around them by hand.

local paywire = Proto("paywire", "Paywire payment protocol")

-- BEGIN GENERATED: protocol-tables (python -m protocol.wireshark --write ...)
-- The header (docs/protocol.md section 2): {filter name, offset, size}, big-endian.
local HEADER_LAYOUT = {
  {"length", 0, 4},
  {"version", 4, 1},
  {"type", 5, 1},
  {"flags", 6, 2},
  {"request_id", 8, 8},
}
local HEADER_BYTES = 16
local PROTOCOL_VERSION = 1
local HANDSHAKE_BODY_BYTES_MAX = 16384
local BODY_BYTES_MAX_CEILING = 4194304

local FRAME_TYPES = {
  [1] = "HELLO",
  [2] = "WELCOME",
  [3] = "REQUEST",
  [4] = "RESPONSE",
  [5] = "EVENT",
  [6] = "PING",
  [7] = "PONG",
  [8] = "GOAWAY",
  [9] = "ERROR",
}

-- Flag bits, and the bits each frame type may carry (every other bit is reserved).
local FLAG_BITS = {
  {0x0001, "ERROR"},
  {0x0002, "REPLAYED"},
}
local FLAGS_ALLOWED = {
  [1] = 0x0000,
  [2] = 0x0000,
  [3] = 0x0000,
  [4] = 0x0003,
  [5] = 0x0000,
  [6] = 0x0000,
  [7] = 0x0000,
  [8] = 0x0000,
  [9] = 0x0000,
}

-- request_id by type (section 2.5): true, MUST be non-zero; false, MUST be 0.
local REQUEST_ID_NONZERO = {
  [1] = false,
  [2] = false,
  [3] = true,
  [4] = true,
  [5] = false,
  [8] = false,
  [9] = false,
}

local ERROR_CODES = {
  [100] = "BAD_FRAME",
  [101] = "UNSUPPORTED_VERSION",
  [102] = "FRAME_TOO_LARGE",
  [103] = "UNKNOWN_FRAME_TYPE",
  [104] = "RESERVED_FLAGS",
  [105] = "TRUNCATED_FRAME",
  [106] = "UNEXPECTED_FRAME",
  [107] = "HANDSHAKE_TIMEOUT",
  [108] = "IDLE_TIMEOUT",
  [109] = "DUPLICATE_REQUEST_ID",
  [200] = "MALFORMED_BODY",
  [201] = "INVALID_FIELD",
  [202] = "UNKNOWN_OPERATION",
  [203] = "RESUME_EXPIRED",
  [300] = "UNAUTHENTICATED",
  [301] = "BAD_SIGNATURE",
  [302] = "REPLAYED",
  [303] = "STALE_TIMESTAMP",
  [304] = "FORBIDDEN",
  [400] = "RATE_LIMITED",
  [401] = "TOO_MANY_IN_FLIGHT",
  [402] = "TOO_MANY_CONNECTIONS",
  [403] = "QUEUE_FULL",
  [404] = "RESPONSE_TOO_LARGE",
  [500] = "DUPLICATE_ORDER",
  [501] = "INVALID_TRANSITION",
  [502] = "INSUFFICIENT_FUNDS",
  [503] = "NOT_FOUND",
  [504] = "REFUND_EXCEEDS_CAPTURED",
  [505] = "NO_ROUTE",
  [506] = "ACCOUNT_UNKNOWN",
  [507] = "CARD_EXPIRED",
  [508] = "CURRENCY_NOT_SUPPORTED",
  [509] = "TOO_MANY_REFUNDS",
  [600] = "BANK_UNAVAILABLE",
  [601] = "TIMEOUT",
  [602] = "OUTCOME_UNKNOWN",
  [900] = "INTERNAL",
  [901] = "SHUTTING_DOWN",
}

-- Every body key a schema names: {key, msgpack kind, display-filter name}.
local BODY_KEYS = {
  {"account", "str", "paywire.account"},
  {"amount", "uint", "paywire.amount"},
  {"args", "map", "paywire.args"},
  {"bank", "str", "paywire.bank"},
  {"blackhole", "bool", "paywire.blackhole"},
  {"body_bytes_max", "uint", "paywire.body_bytes_max"},
  {"capture", "bool", "paywire.capture"},
  {"captured_amount", "uint", "paywire.captured_amount"},
  {"card", "map", "paywire.card"},
  {"card_brand", "str", "paywire.card_brand"},
  {"client", "str", "paywire.client"},
  {"code", "uint", "paywire.code"},
  {"country", "str", "paywire.country"},
  {"currency", "str", "paywire.currency"},
  {"customer", "map", "paywire.customer"},
  {"cvv", "str", "paywire.cvv"},
  {"data", "map", "paywire.data"},
  {"decline_reason", "str", "paywire.decline_reason"},
  {"description", "str", "paywire.description"},
  {"email", "str", "paywire.email"},
  {"event_seq", "uint", "paywire.event_seq"},
  {"events_since", "uint", "paywire.events_since"},
  {"exp_month", "uint", "paywire.exp_month"},
  {"exp_year", "uint", "paywire.exp_year"},
  {"expiry_ms", "uint", "paywire.expiry_ms"},
  {"expiry_s", "uint", "paywire.expiry_s"},
  {"expiry_time", "str", "paywire.expiry_time"},
  {"failure_rate_pct", "uint", "paywire.failure_rate_pct"},
  {"field", "str", "paywire.field"},
  {"fraud_reasons", "array", "paywire.fraud_reasons"},
  {"fraud_status", "str", "paywire.fraud_status"},
  {"gross_amount", "uint", "paywire.gross_amount"},
  {"heartbeat_interval_ms", "uint", "paywire.heartbeat_interval_ms"},
  {"hops_us", "map", "paywire.hops_us"},
  {"identity", "str", "paywire.identity"},
  {"in_flight_max", "uint", "paywire.in_flight_max"},
  {"ip", "str", "paywire.ip"},
  {"kind", "str", "paywire.kind"},
  {"last_request_id", "uint", "paywire.last_request_id"},
  {"latency_ms", "uint", "paywire.latency_ms"},
  {"masked_card", "str", "paywire.masked_card"},
  {"merchant_id", "str", "paywire.merchant_id"},
  {"message", "str", "paywire.message"},
  {"metadata", "map", "paywire.metadata"},
  {"name", "str", "paywire.name"},
  {"nonce", "bin", "paywire.nonce"},
  {"notification_id", "uint", "paywire.notification_id"},
  {"notification_url", "str", "paywire.notification_url"},
  {"number", "str", "paywire.number"},
  {"op", "str", "paywire.op"},
  {"op_id", "str", "paywire.op_id"},
  {"ops", "array", "paywire.ops"},
  {"order_id", "str", "paywire.order_id"},
  {"paid_ms", "uint", "paywire.paid_ms"},
  {"payment_type", "str", "paywire.payment_type"},
  {"phone", "str", "paywire.phone"},
  {"provider", "str", "paywire.provider"},
  {"reason", "str", "paywire.reason"},
  {"refund_key", "str", "paywire.refund_key"},
  {"refunded_amount", "uint", "paywire.refunded_amount"},
  {"refunds", "array", "paywire.refunds"},
  {"resume_token", "bin", "paywire.resume_token"},
  {"role", "str", "paywire.role"},
  {"sent_us", "uint", "paywire.sent_us"},
  {"seq", "uint", "paywire.seq"},
  {"server", "str", "paywire.server"},
  {"server_time_ms", "uint", "paywire.server_time_ms"},
  {"session_id", "str", "paywire.session_id"},
  {"settlement_time", "str", "paywire.settlement_time"},
  {"signature", "bin", "paywire.signature"},
  {"status", "str", "paywire.status"},
  {"status_code", "str", "paywire.status_code"},
  {"status_message", "str", "paywire.status_message"},
  {"subscribe_events", "bool", "paywire.subscribe_events"},
  {"target_op_id", "str", "paywire.target_op_id"},
  {"time", "str", "paywire.time"},
  {"time_ms", "uint", "paywire.time_ms"},
  {"timestamp_ms", "uint", "paywire.timestamp_ms"},
  {"transaction_id", "str", "paywire.transaction_id"},
  {"transaction_status", "str", "paywire.transaction_status"},
  {"transaction_time", "str", "paywire.transaction_time"},
  {"type", "str", "paywire.body.type"},
  {"va_number", "str", "paywire.va_number"},
  {"version", "uint", "paywire.body.version"},
  {"versions", "array", "paywire.versions"},
}

local DEFAULT_TLS_PORTS = "7400,7500"
-- END GENERATED: protocol-tables

-- Robustness bounds of the msgpack decoder: the spec allows depth 8 and 256 items; a
-- capture may hold anything, so the dissector stops well past those instead of recursing
-- or looping without end on hostile bytes.
local MSGPACK_DEPTH_MAX = 16
local MSGPACK_ITEMS_MAX = 4096
-- Text shown for a long string value in the tree (the field keeps the whole value).
local TEXT_SHOWN_CHARS_MAX = 80

---------------------------------------------------------------------------------------------
-- Fields
---------------------------------------------------------------------------------------------

local hf = {}
hf.length = ProtoField.uint32("paywire.length", "Body length", base.DEC)
hf.version = ProtoField.uint8("paywire.version", "Version", base.DEC)
hf.type = ProtoField.uint8("paywire.type", "Frame type", base.DEC, FRAME_TYPES)
hf.type_name = ProtoField.string("paywire.type_name", "Frame type name")
hf.flags = ProtoField.uint16("paywire.flags", "Flags", base.HEX)
hf.flag = {}
local FLAG_VALUE = {}
for _, bitname in ipairs(FLAG_BITS) do
  FLAG_VALUE[bitname[2]] = bitname[1]
  local bit, name = bitname[1], bitname[2]
  hf.flag[name] = ProtoField.bool("paywire.flags." .. string.lower(name), name, 16, nil, bit)
end
hf.request_id = ProtoField.uint64("paywire.request_id", "Request id", base.DEC)
hf.body = ProtoField.bytes("paywire.body", "Body")
hf.error_code = ProtoField.uint16("paywire.error_code", "Error code", base.DEC, ERROR_CODES)
hf.error_name = ProtoField.string("paywire.error_name", "Error name")
hf.error_message = ProtoField.string("paywire.error_message", "Error message")
hf.error_field = ProtoField.string("paywire.error_field", "Error field")
-- Every map key, known or not, so `paywire.key == "foo"` finds keys no schema names.
hf.key = ProtoField.string("paywire.key", "Key")
hf.value = ProtoField.string("paywire.value", "Value (as text)")

-- One field per body key the schemas name, typed by its msgpack kind.
local key_fields = {}
local key_kinds = {}
for _, entry in ipairs(BODY_KEYS) do
  local key, kind, abbrev = entry[1], entry[2], entry[3]
  local f
  if kind == "str" then f = ProtoField.string(abbrev, key)
  elseif kind == "uint" then f = ProtoField.uint64(abbrev, key, base.DEC)
  elseif kind == "int" then f = ProtoField.int64(abbrev, key, base.DEC)
  elseif kind == "bool" then f = ProtoField.bool(abbrev, key)
  elseif kind == "bin" then f = ProtoField.bytes(abbrev, key)
  elseif kind == "map" or kind == "array" then f = ProtoField.none(abbrev, key)
  else f = ProtoField.string(abbrev, key) end
  key_fields[key] = f
  key_kinds[key] = kind
end

local all_fields = { hf.length, hf.version, hf.type, hf.type_name, hf.flags, hf.request_id,
                     hf.body, hf.error_code, hf.error_name, hf.error_message, hf.error_field,
                     hf.key, hf.value }
for _, f in pairs(hf.flag) do all_fields[#all_fields + 1] = f end
for _, f in pairs(key_fields) do all_fields[#all_fields + 1] = f end
paywire.fields = all_fields

local ef_header = ProtoExpert.new("paywire.bad_header", "Header a receiver refuses",
                                  expert.group.MALFORMED, expert.severity.ERROR)
local ef_body = ProtoExpert.new("paywire.bad_body", "Body is not msgpack within the rules",
                                expert.group.MALFORMED, expert.severity.ERROR)
local ef_error = ProtoExpert.new("paywire.error", "Error answer",
                                 expert.group.RESPONSE_CODE, expert.severity.NOTE)
paywire.experts = { ef_header, ef_body, ef_error }

---------------------------------------------------------------------------------------------
-- msgpack: decode to a tree of nodes {kind, value, offset, len, items}
---------------------------------------------------------------------------------------------

local decode -- forward

local function need(tvb, off, n)
  if off + n > tvb:len() then error("msgpack value runs past the end of the body", 0) end
end

local function uint_at(tvb, off, n)
  need(tvb, off, n)
  if n == 8 then return tvb(off, 8):uint64() end
  return tvb(off, n):uint()
end

local function int_at(tvb, off, n)
  need(tvb, off, n)
  if n == 8 then return tvb(off, 8):int64() end
  return tvb(off, n):int()
end

local function container(tvb, off, start, count, kind, depth)
  if depth > MSGPACK_DEPTH_MAX then error("msgpack nested deeper than " .. MSGPACK_DEPTH_MAX, 0) end
  if count > MSGPACK_ITEMS_MAX then error("msgpack container of " .. count .. " items", 0) end
  local node = { kind = kind, offset = start, items = {} }
  local pos = off
  for i = 1, count do
    if kind == "map" then
      local k = decode(tvb, pos, depth + 1)
      pos = k.offset + k.len
      local v = decode(tvb, pos, depth + 1)
      pos = v.offset + v.len
      node.items[i] = { key = k, value = v }
    else
      local v = decode(tvb, pos, depth + 1)
      pos = v.offset + v.len
      node.items[i] = { value = v }
    end
  end
  node.len = pos - start
  return node
end

local function sized(tvb, off, start, hdr, n, kind)
  need(tvb, off + hdr, n)
  local node = { kind = kind, offset = start, len = hdr + n, data_offset = off + hdr, data_len = n }
  if kind == "str" then node.value = tvb(off + hdr, n):string(ENC_UTF_8)
  else node.value = (n > 0) and tvb(off + hdr, n):bytes() or ByteArray.new() end
  return node
end

decode = function(tvb, off, depth)
  need(tvb, off, 1)
  local b = tvb(off, 1):uint()
  local p = off + 1
  if b <= 0x7f then return { kind = "int", value = b, offset = off, len = 1 } end
  if b >= 0xe0 then return { kind = "int", value = b - 0x100, offset = off, len = 1 } end
  if b >= 0x80 and b <= 0x8f then return container(tvb, p, off, b - 0x80, "map", depth) end
  if b >= 0x90 and b <= 0x9f then return container(tvb, p, off, b - 0x90, "array", depth) end
  if b >= 0xa0 and b <= 0xbf then return sized(tvb, off, off, 1, b - 0xa0, "str") end
  if b == 0xc0 then return { kind = "nil", offset = off, len = 1 } end
  if b == 0xc2 or b == 0xc3 then return { kind = "bool", value = (b == 0xc3), offset = off, len = 1 } end
  if b == 0xc4 then return sized(tvb, off, off, 2, uint_at(tvb, p, 1), "bin") end
  if b == 0xc5 then return sized(tvb, off, off, 3, uint_at(tvb, p, 2), "bin") end
  if b == 0xc6 then return sized(tvb, off, off, 5, uint_at(tvb, p, 4), "bin") end
  if b == 0xd9 then return sized(tvb, off, off, 2, uint_at(tvb, p, 1), "str") end
  if b == 0xda then return sized(tvb, off, off, 3, uint_at(tvb, p, 2), "str") end
  if b == 0xdb then return sized(tvb, off, off, 5, uint_at(tvb, p, 4), "str") end
  if b == 0xca then need(tvb, p, 4) return { kind = "float", value = tvb(p, 4):float(), offset = off, len = 5 } end
  if b == 0xcb then need(tvb, p, 8) return { kind = "float", value = tvb(p, 8):float(), offset = off, len = 9 } end
  local widths = { [0xcc] = 1, [0xcd] = 2, [0xce] = 4, [0xcf] = 8 }
  if widths[b] then
    return { kind = "int", value = uint_at(tvb, p, widths[b]), offset = off, len = 1 + widths[b] }
  end
  local swidths = { [0xd0] = 1, [0xd1] = 2, [0xd2] = 4, [0xd3] = 8 }
  if swidths[b] then
    return { kind = "int", value = int_at(tvb, p, swidths[b]), offset = off, len = 1 + swidths[b] }
  end
  if b == 0xdc then return container(tvb, off + 3, off, uint_at(tvb, p, 2), "array", depth) end
  if b == 0xdd then return container(tvb, off + 5, off, uint_at(tvb, p, 4), "array", depth) end
  if b == 0xde then return container(tvb, off + 3, off, uint_at(tvb, p, 2), "map", depth) end
  if b == 0xdf then return container(tvb, off + 5, off, uint_at(tvb, p, 4), "map", depth) end
  local fixext = { [0xd4] = 1, [0xd5] = 2, [0xd6] = 4, [0xd7] = 8, [0xd8] = 16 }
  if fixext[b] then
    need(tvb, off, 2 + fixext[b])
    return { kind = "ext", ext_type = tvb(off + 1, 1):int(), value = tvb(off + 2, fixext[b]):bytes(),
             offset = off, len = 2 + fixext[b] }
  end
  local ext = { [0xc7] = 1, [0xc8] = 2, [0xc9] = 4 }
  if ext[b] then
    local n = uint_at(tvb, p, ext[b])
    need(tvb, off, 2 + ext[b] + n)
    return { kind = "ext", ext_type = tvb(off + 1 + ext[b], 1):int(),
             value = (n > 0) and tvb(off + 2 + ext[b], n):bytes() or ByteArray.new(),
             offset = off, len = 2 + ext[b] + n }
  end
  error(string.format("0x%02x is not a msgpack type", b), 0)
end

-- A msgpack value as one line of text.
local function as_text(node)
  local k = node.kind
  if k == "str" then
    local s = node.value
    if #s > TEXT_SHOWN_CHARS_MAX then s = s:sub(1, TEXT_SHOWN_CHARS_MAX) .. "…" end
    return '"' .. s .. '"'
  elseif k == "bin" or k == "ext" then
    local prefix = (k == "ext") and string.format("ext type %d ", node.ext_type) or ""
    return prefix .. string.format("<%d bytes> %s", node.value:len(),
                         node.value:len() > 0 and node.value:subset(0, math.min(node.value:len(), 16)):tohex() or "")
  elseif k == "nil" then return "nil"
  elseif k == "bool" then return node.value and "true" or "false"
  elseif k == "map" then return string.format("{%d entries}", #node.items)
  elseif k == "array" then return string.format("[%d items]", #node.items)
  else return tostring(node.value) end
end

---------------------------------------------------------------------------------------------
-- Body tree
---------------------------------------------------------------------------------------------

-- Which field shows `key`'s value of this node, or nil for the generic key/value text item.
local ERROR_KEYS = { code = hf.error_code, name = hf.error_name, message = hf.error_message,
                     field = hf.error_field }

local function field_for(key, node, in_error)
  if in_error and ERROR_KEYS[key] then
    if key == "code" then
      -- Codes are 0..999 (§7); anything else is shown as text, not forced into the field.
      local v = node.value
      if node.kind == "int" and type(v) == "number" and v >= 0 and v <= 0xffff then
        return hf.error_code
      end
      return nil
    end
    if node.kind == "str" then return ERROR_KEYS[key] end
    return nil
  end
  local f, kind = key_fields[key], key_kinds[key]
  if f == nil then return nil end
  local nk = node.kind
  if kind == "str" and nk == "str" then return f end
  if kind == "bool" and nk == "bool" then return f end
  if kind == "bin" and nk == "bin" then return f end
  if (kind == "map" or kind == "array") and (nk == "map" or nk == "array") then return f end
  -- A REQUEST envelope's args: a bin holding the map (unpacked below the item).
  if key == "args" and nk == "bin" then return f end
  if kind == "uint" and nk == "int" then
    local v = node.value
    if type(v) == "number" then
      if v >= 0 then return f, UInt64(v) end
    elseif typeof(v) == "UInt64" then
      return f
    elseif v >= Int64(0) then
      -- A non-negative int 64 (0xd3) shown in the unsigned field.
      return f, UInt64(v:lower(), v:higher())
    end
    return nil
  end
  if kind == "int" and nk == "int" then
    local v = node.value
    if type(v) == "number" then return f, Int64(v) end
    if typeof(v) == "Int64" then return f end
    if v <= UInt64(0x7fffffff, 0x7fffffff) then return f, Int64(v:lower(), v:higher()) end
    return nil
  end
  if kind == "any" and nk ~= "map" and nk ~= "array" then return f, as_text(node) end
  return nil
end

local add_node -- forward

-- Where summaries for the Info column are collected while one frame's body is shown.
local summary

local function add_entries(tree, tvb, node, in_error, depth)
  for i, item in ipairs(node.items) do
    local key
    if item.key then
      key = (item.key.kind == "str") and item.key.value or ("<" .. as_text(item.key) .. ">")
    else
      key = "[" .. (i - 1) .. "]"
    end
    add_node(tree, tvb, item.value, key, item.key, in_error, depth)
  end
end

add_node = function(tree, tvb, node, key, key_node, in_error, depth)
  local start = key_node and key_node.offset or node.offset
  local range = tvb(start, node.offset + node.len - start)
  local named = key_node ~= nil and key_node.kind == "str"
  local f, value = nil, nil
  if named then f, value = field_for(key, node, in_error) end
  local item
  if f ~= nil and node.kind ~= "map" and node.kind ~= "array" then
    if value == nil then
      value = node.value
      if node.kind == "bin" then
        -- The field holds the bytes themselves, without the bin header.
        item = tree:add(f, tvb(node.data_offset, node.data_len))
      else
        item = tree:add(f, range, value)
      end
    else
      item = tree:add(f, range, value)
    end
    if f == hf.error_code then
      item:set_text(key .. ": " .. as_text(node) .. " (" .. (ERROR_CODES[node.value] or "unknown code") .. ")")
    else
      item:set_text(key .. ": " .. as_text(node))
    end
  elseif f ~= nil then
    item = tree:add(f, range)
    item:set_text(key .. ": " .. as_text(node))
  else
    item = tree:add(hf.value, range, as_text(node))
    item:set_text(key .. ": " .. as_text(node))
  end
  if named then tree:add(hf.key, tvb(key_node.offset, key_node.len), key):set_hidden() end

  if named and summary then
    if (key == "op" or key == "order_id" or key == "transaction_status") and node.kind == "str" then
      summary[#summary + 1] = key .. "=" .. node.value
    elseif in_error and key == "name" and node.kind == "str" then
      summary[#summary + 1] = node.value
    end
  end

  if node.kind == "map" or node.kind == "array" then
    -- The map under an `error` key (a bank.batch entry) is an error body.
    add_entries(item, tvb, node, key == "error", depth + 1)
  elseif node.kind == "bin" and key == "args" and node.data_len > 0 then
    -- A REQUEST envelope's args: the exact msgpack bytes the signature covers (§4.1).
    local inner_tvb = tvb(node.data_offset, node.data_len):tvb("args (msgpack)")
    local ok, inner = pcall(decode, inner_tvb, 0, depth + 1)
    if ok and inner.len == node.data_len and inner.kind == "map" then
      -- The unpacked map's entries go directly under `args`, as if it were embedded.
      item:append_text(string.format(" (unpacked: {%d entries})", #inner.items))
      add_entries(item, inner_tvb, inner, false, depth + 1)
    elseif ok and inner.len == node.data_len then
      add_node(item, inner_tvb, inner, "(unpacked)", nil, false, depth + 1)
    else
      item:add_proto_expert_info(ef_body, "args is not one msgpack value: " ..
                                 (ok and "bytes after the value" or tostring(inner)))
    end
  end
  return item
end

---------------------------------------------------------------------------------------------
-- One frame
---------------------------------------------------------------------------------------------

-- Bit tests by arithmetic: Lua 5.2 has bit32, 5.3+ has operators; this runs in both.
local FLAGS_BITS = 16

local function has_bit(value, bit)
  return math.floor(value / bit) % 2 == 1
end

local function reserved_bits_set(flags, allowed)
  local bit = 1
  for _ = 1, FLAGS_BITS do
    if has_bit(flags, bit) and not has_bit(allowed, bit) then return true end
    bit = bit * 2
  end
  return false
end

local HEADER_FIELD_OF = { length = hf.length, version = hf.version, type = hf.type,
                          flags = hf.flags, request_id = hf.request_id }
local LAYOUT = {}
for _, e in ipairs(HEADER_LAYOUT) do LAYOUT[e[1]] = { offset = e[2], size = e[3] } end

local function header_value(tvb, name)
  local l = LAYOUT[name]
  if l.size == 8 then return tvb(l.offset, 8):uint64() end
  return tvb(l.offset, l.size):uint()
end

local function dissect_frame(tvb, pinfo, root)
  local length = header_value(tvb, "length")
  local version = header_value(tvb, "version")
  local ftype = header_value(tvb, "type")
  local flags = header_value(tvb, "flags")
  local request_id = header_value(tvb, "request_id")
  local tname = FRAME_TYPES[ftype] or string.format("UNKNOWN(%d)", ftype)

  local tree = root:add(paywire, tvb(0, tvb:len()))
  for _, e in ipairs(HEADER_LAYOUT) do
    local item = tree:add(HEADER_FIELD_OF[e[1]], tvb(e[2], e[3]))
    if e[1] == "flags" then
      for _, bitname in ipairs(FLAG_BITS) do item:add(hf.flag[bitname[2]], tvb(e[2], e[3])) end
    elseif e[1] == "type" then
      tree:add(hf.type_name, tvb(e[2], e[3]), tname):set_generated()
    end
  end

  -- The header checks of §2.1 and §2.5, in the spec's order.
  if version ~= PROTOCOL_VERSION then
    tree:add_proto_expert_info(ef_header, "UNSUPPORTED_VERSION: version " .. version)
  elseif FRAME_TYPES[ftype] == nil then
    tree:add_proto_expert_info(ef_header, "UNKNOWN_FRAME_TYPE: type " .. ftype)
  elseif reserved_bits_set(flags, FLAGS_ALLOWED[ftype]) then
    tree:add_proto_expert_info(ef_header, string.format("RESERVED_FLAGS: 0x%04x on %s", flags, tname))
  elseif length > BODY_BYTES_MAX_CEILING then
    tree:add_proto_expert_info(ef_header, "FRAME_TOO_LARGE: body_length " .. length)
  elseif REQUEST_ID_NONZERO[ftype] == true and request_id == UInt64(0) then
    tree:add_proto_expert_info(ef_header, "BAD_FRAME: " .. tname .. " with request_id 0")
  elseif REQUEST_ID_NONZERO[ftype] == false and request_id ~= UInt64(0) then
    tree:add_proto_expert_info(ef_header, "BAD_FRAME: " .. tname .. " with request_id " .. tostring(request_id))
  end

  local flag_names = {}
  for _, bitname in ipairs(FLAG_BITS) do
    if has_bit(flags, bitname[1]) then flag_names[#flag_names + 1] = bitname[2] end
  end
  -- Bodies whose code/name/message/field are an error's (§7; GOAWAY carries a code too).
  local is_error = FRAME_TYPES[ftype] == "ERROR" or FRAME_TYPES[ftype] == "GOAWAY" or
                   (FRAME_TYPES[ftype] == "RESPONSE" and has_bit(flags, FLAG_VALUE.ERROR))

  summary = {}
  local body_len = tvb:len() - HEADER_BYTES
  if body_len > 0 then
    local body = tvb(HEADER_BYTES, body_len)
    local btree = tree:add(hf.body, body)
    btree:set_text(string.format("Body (%d bytes of msgpack)", body_len))
    local btvb = body:tvb()
    local ok, node = pcall(decode, btvb, 0, 1)
    if not ok then
      btree:add_proto_expert_info(ef_body, "MALFORMED_BODY: " .. tostring(node))
    else
      if node.kind ~= "map" then
        btree:add_proto_expert_info(ef_body, "MALFORMED_BODY: the body is a " .. node.kind .. ", not a map")
      end
      if node.len < body_len then
        btree:add_proto_expert_info(ef_body, "MALFORMED_BODY: bytes after the map")
      end
      if node.kind == "map" then
        add_entries(btree, btvb, node, is_error, 1)
      else
        add_node(btree, btvb, node, "(value)", nil, is_error, 1)
      end
    end
  end

  local text = tname
  if REQUEST_ID_NONZERO[ftype] ~= false then text = text .. " #" .. tostring(request_id) end
  if #flag_names > 0 then text = text .. " [" .. table.concat(flag_names, ",") .. "]" end
  if #summary > 0 then text = text .. " " .. table.concat(summary, " ") end
  if is_error and FRAME_TYPES[ftype] ~= "GOAWAY" then tree:add_proto_expert_info(ef_error, text) end
  summary = nil
  tree:append_text(": " .. text)

  -- One packet may hold several frames (and several TLS records): the first replaces the
  -- Info column, the others are appended. pinfo.private lives for one packet's dissection.
  pinfo.cols.protocol = "Paywire"
  if pinfo.private.paywire_frames == nil then
    pinfo.cols.info = text
    pinfo.private.paywire_frames = "1"
  else
    pinfo.cols.info:append(", " .. text)
  end
  return tvb:len()
end

local function frame_length(tvb, pinfo, offset)
  local length = tvb(offset + LAYOUT.length.offset, LAYOUT.length.size):uint()
  if length > BODY_BYTES_MAX_CEILING then
    -- A hostile or misread length: do not wait for gigabytes, show what is here.
    return tvb:len() - offset
  end
  return HEADER_BYTES + length
end

local function dissect_stream(tvb, pinfo, tree)
  dissect_tcp_pdus(tvb, tree, HEADER_BYTES, frame_length, dissect_frame, true)
  return tvb:len()
end
-- (Reading paywire.dissector back gives a Dissector handle, whose call would take away
-- the heuristics' right to ask TCP for more bytes: they call dissect_stream itself.)
paywire.dissector = dissect_stream

---------------------------------------------------------------------------------------------
-- Heuristic: a valid header followed by a msgpack map
---------------------------------------------------------------------------------------------

local function looks_like_paywire(tvb)
  if tvb:len() < HEADER_BYTES + 1 then return false end
  local length = header_value(tvb, "length")
  local version = header_value(tvb, "version")
  local ftype = header_value(tvb, "type")
  local flags = header_value(tvb, "flags")
  if version ~= PROTOCOL_VERSION or FRAME_TYPES[ftype] == nil then return false end
  if reserved_bits_set(flags, FLAGS_ALLOWED[ftype]) then return false end
  if length < 1 or length > BODY_BYTES_MAX_CEILING then return false end
  local first = tvb(HEADER_BYTES, 1):uint()
  return (first >= 0x80 and first <= 0x8f) or first == 0xde or first == 0xdf
end

-- On plain TCP a match claims the whole conversation, so its later segments (which start
-- mid-frame) come here too.
local function heuristic_tcp(tvb, pinfo, tree)
  if not paywire.prefs.heuristic or not looks_like_paywire(tvb) then return false end
  pinfo.conversation = paywire
  dissect_stream(tvb, pinfo, tree)
  return true
end

-- Inside TLS the conversation must stay TLS's (claiming it would hand us ciphertext); TLS
-- remembers the heuristic that matched for the session's later records.
local function heuristic_tls(tvb, pinfo, tree)
  if not paywire.prefs.heuristic or not looks_like_paywire(tvb) then return false end
  dissect_stream(tvb, pinfo, tree)
  return true
end

---------------------------------------------------------------------------------------------
-- Registration and preferences
---------------------------------------------------------------------------------------------

paywire.prefs.tls_ports = Pref.range("TLS ports", DEFAULT_TLS_PORTS,
  "TCP ports carrying Paywire over TLS (hub merchant ports, bank node ports). Decrypting " ..
  "needs the TLS key log (SSLKEYLOGFILE) in the TLS protocol preferences.", 65535)
paywire.prefs.tcp_ports = Pref.range("Plain TCP ports", "",
  "TCP ports carrying Paywire without TLS (the plaintext lab mode, loopback only).", 65535)

paywire.prefs.heuristic = Pref.bool("Find Paywire on any port", true,
  "Recognise Paywire on other TCP ports and in TLS sessions on other ports by its first " ..
  "frame (a valid header followed by a msgpack map); the port lists above always apply.")

local tcp_table = DissectorTable.get("tcp.port")
local tls_table = DissectorTable.get("tls.port")
local tls_handle = Dissector.get("tls")
local registered_tls, registered_tcp = "", ""

local function register_ports()
  if registered_tls ~= "" then
    tcp_table:remove(registered_tls, tls_handle)
    tls_table:remove(registered_tls, paywire)
  end
  if registered_tcp ~= "" then tcp_table:remove(registered_tcp, paywire) end
  registered_tls = tostring(paywire.prefs.tls_ports)
  registered_tcp = tostring(paywire.prefs.tcp_ports)
  if registered_tls ~= "" then
    tcp_table:add(registered_tls, tls_handle)
    tls_table:add(registered_tls, paywire)
  end
  if registered_tcp ~= "" then tcp_table:add(registered_tcp, paywire) end
end

function paywire.prefs_changed()
  register_ports()
end

register_ports()
paywire:register_heuristic("tcp", heuristic_tcp)
paywire:register_heuristic("tls", heuristic_tls)
