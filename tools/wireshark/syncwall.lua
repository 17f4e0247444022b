-- syncwall.lua: a Wireshark dissector for syncwall's state-sync protocol.
--
-- A sync frame is one UDP datagram: a msgpack array
--   [version, lab, sender, incarnation, to_inc, epoch, seq, ack, type, payload]
-- followed by a 32-byte HMAC-SHA256 tag over that array (see sync/wire.py).
-- Install: copy this file to ~/.local/lib/wireshark/plugins/ (see docs/wireshark.md), or
-- run `tshark -X lua_script:tools/wireshark/syncwall.lua -r FILE -V`.
-- Preferences: syncwall.port (UDP port, default 7400), syncwall.key (the lab's key in hex;
-- empty: the HMAC is shown, not checked), syncwall.lab_id (flag frames of another lab).

local p = Proto("syncwall", "syncwall state sync")

local TAG_BYTES = 32
local MIN_FRAME_BYTES = TAG_BYTES + 8
local WIRE_VERSION = 1
local MAX_DEPTH = 32

-- Wire codes; they mirror sync/wire.py, sync/agent.py (Mode) and sync/membership.py.
local MSG = { [1] = "HELLO", [2] = "HEARTBEAT", [3] = "ACK", [4] = "RECORDS", [5] = "BULK_REQUEST",
  [6] = "BULK_START", [7] = "BULK_END", [8] = "STATE_REQUEST", [9] = "STATE_REPLY", [10] = "VIEW",
  [11] = "LEAVE", [12] = "KEYS", [13] = "WANT" }
local MODES = { [0] = "joining", [1] = "active", [2] = "leaving", [3] = "left", [4] = "gone" }
local STATES = { [0] = "active", [1] = "joining", [2] = "failed", [3] = "offline" }
local TRIGGERS = { [0] = "state-modified", [1] = "full-sync", [2] = "periodic", [3] = "node-failed",
  [4] = "resync-request", [5] = "graceful-leave", [6] = "state-request", [7] = "related-connection",
  [8] = "rebalance" }
local SCOPES = { [0] = "node", [1] = "common" }

local f = {
  version = ProtoField.uint8("syncwall.version", "Version"),
  lab = ProtoField.string("syncwall.lab", "Lab id"),
  sender = ProtoField.string("syncwall.sender", "Sender"),
  incarnation = ProtoField.uint64("syncwall.incarnation", "Incarnation"),
  to_inc = ProtoField.uint64("syncwall.to_inc", "Receiver incarnation"),
  epoch = ProtoField.uint64("syncwall.epoch", "Epoch"),
  seq = ProtoField.uint64("syncwall.seq", "Sequence"),
  ack = ProtoField.uint64("syncwall.ack", "Cumulative ack"),
  type = ProtoField.uint8("syncwall.type", "Type", base.DEC, MSG),
  type_name = ProtoField.string("syncwall.type_name", "Type name"),
  payload = ProtoField.bytes("syncwall.payload", "Payload"),
  hmac = ProtoField.bytes("syncwall.hmac", "HMAC-SHA256"),
  hmac_status = ProtoField.string("syncwall.hmac_status", "HMAC status"),
  malformed = ProtoField.string("syncwall.malformed", "Malformed"),
  mode = ProtoField.string("syncwall.mode", "Mode"),
  ready = ProtoField.bool("syncwall.ready", "Ready"),
  trigger = ProtoField.string("syncwall.trigger", "Trigger"),
  count = ProtoField.uint32("syncwall.count", "Record count"),
  key = ProtoField.bytes("syncwall.req_key", "Key"),
  found = ProtoField.bool("syncwall.found", "Found"),
  record = ProtoField.none("syncwall.record", "Record"),
  rec_key = ProtoField.bytes("syncwall.record.key", "Key"),
  rec_scope = ProtoField.string("syncwall.record.scope", "Scope"),
  rec_owner = ProtoField.string("syncwall.record.owner", "Owner"),
  rec_version = ProtoField.uint64("syncwall.record.version", "Version"),
  rec_bucket = ProtoField.int32("syncwall.record.bucket", "Bucket"),
  rec_deleted = ProtoField.bool("syncwall.record.deleted", "Deleted"),
  rec_data = ProtoField.string("syncwall.record.data", "Data"),
  view_epoch = ProtoField.uint64("syncwall.view.epoch", "View epoch"),
  proposer = ProtoField.string("syncwall.view.proposer", "Proposer"),
  member_state = ProtoField.string("syncwall.view.state", "Member state"),
  bucket_owner = ProtoField.string("syncwall.view.bucket_owner", "Bucket owner"),
  backup_group = ProtoField.string("syncwall.view.backup_group", "Backup group"),
}
p.fields = {}
for _, field in pairs(f) do
  table.insert(p.fields, field)
end

local ef_malformed = ProtoExpert.new("syncwall.malformed.expert", "Malformed sync frame",
  expert.group.MALFORMED, expert.severity.ERROR)
local ef_bad_hmac = ProtoExpert.new("syncwall.hmac.bad", "HMAC does not match the key preference",
  expert.group.CHECKSUM, expert.severity.WARN)
local ef_other_lab = ProtoExpert.new("syncwall.lab.other", "Frame of another lab",
  expert.group.PROTOCOL, expert.severity.WARN)
local ef_no_key = ProtoExpert.new("syncwall.hmac.unchecked", "HMAC not checked (no key preference)",
  expert.group.CHECKSUM, expert.severity.NOTE)
p.experts = { ef_malformed, ef_bad_hmac, ef_other_lab, ef_no_key }

p.prefs.port = Pref.uint("UDP port", 7400, "The UDP port of the sync segment")
p.prefs.key = Pref.string("HMAC key (hex)", "",
  "The lab's sync key in hex (xxd -p -c 64 /run/syncwall/LAB/sync.key); empty: not checked")
p.prefs.lab_id = Pref.string("Lab id", "", "Flag frames whose lab id differs; empty: accept any")

-- ---- SHA-256 and HMAC (Lua 5.2 has bit32 but no hashing) ------------------------------

local band, bor, bxor, bnot = bit32.band, bit32.bor, bit32.bxor, bit32.bnot
local rrot, rsh = bit32.rrotate, bit32.rshift
local K = {
  0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
  0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
  0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
  0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
  0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
  0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
  0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
  0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
}

local function sha256(msg)
  local n = #msg
  local bits = n * 8
  local tail = ""
  for i = 7, 0, -1 do
    tail = tail .. string.char(math.floor(bits / 2 ^ (8 * i)) % 256)
  end
  msg = msg .. "\128" .. string.rep("\0", (55 - n) % 64) .. tail
  local h = { 0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19 }
  local w = {}
  for blk = 1, #msg, 64 do
    for i = 0, 15 do
      local a, b, c, d = msg:byte(blk + 4 * i, blk + 4 * i + 3)
      w[i] = ((a * 256 + b) * 256 + c) * 256 + d
    end
    for i = 16, 63 do
      local s0 = bxor(rrot(w[i - 15], 7), rrot(w[i - 15], 18), rsh(w[i - 15], 3))
      local s1 = bxor(rrot(w[i - 2], 17), rrot(w[i - 2], 19), rsh(w[i - 2], 10))
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) % 4294967296
    end
    local a, b, c, d, e, ff, g, hh = h[1], h[2], h[3], h[4], h[5], h[6], h[7], h[8]
    for i = 0, 63 do
      local S1 = bxor(rrot(e, 6), rrot(e, 11), rrot(e, 25))
      local ch = bxor(band(e, ff), band(bnot(e), g))
      local t1 = (hh + S1 + ch + K[i + 1] + w[i]) % 4294967296
      local S0 = bxor(rrot(a, 2), rrot(a, 13), rrot(a, 22))
      local maj = bxor(band(a, b), band(a, c), band(b, c))
      local t2 = (S0 + maj) % 4294967296
      hh, g, ff, e, d, c, b, a = g, ff, e, (d + t1) % 4294967296, c, b, a, (t1 + t2) % 4294967296
    end
    h[1] = (h[1] + a) % 4294967296; h[2] = (h[2] + b) % 4294967296
    h[3] = (h[3] + c) % 4294967296; h[4] = (h[4] + d) % 4294967296
    h[5] = (h[5] + e) % 4294967296; h[6] = (h[6] + ff) % 4294967296
    h[7] = (h[7] + g) % 4294967296; h[8] = (h[8] + hh) % 4294967296
  end
  local out = {}
  for i = 1, 8 do
    local v = h[i]
    out[i] = string.char(rsh(v, 24), band(rsh(v, 16), 255), band(rsh(v, 8), 255), band(v, 255))
  end
  return table.concat(out)
end

local function hmac_sha256(key, msg)
  if #key > 64 then key = sha256(key) end
  key = key .. string.rep("\0", 64 - #key)
  local ipad, opad = {}, {}
  for i = 1, 64 do
    local k = key:byte(i)
    ipad[i] = string.char(bxor(k, 0x36))
    opad[i] = string.char(bxor(k, 0x5c))
  end
  return sha256(table.concat(opad) .. sha256(table.concat(ipad) .. msg))
end

local function unhex(s)
  s = s:gsub("%s", "")
  if #s % 2 == 1 or s:find("[^%x]") then return nil end
  return (s:gsub("%x%x", function(x) return string.char(tonumber(x, 16)) end))
end

-- ---- msgpack, read straight from the tvb so every value keeps its bytes ----------------
-- A node: { k = kind, off = first byte, len = bytes, voff/vlen = the value's own bytes, v = value }
-- kinds: uint int nil bool float str bin arr map ext. Errors are raised as "msgpack: ...".

local function fail(msg) error("msgpack: " .. msg, 0) end

local read

local function need(limit, off, n)
  if off + n > limit then fail("truncated at byte " .. off) end
end

local function container(tvb, node, off, limit, count, pairs_, depth)
  if count > limit - off then fail("a container claims " .. count .. " items") end
  local items = {}
  for _ = 1, count * (pairs_ and 2 or 1) do
    local item
    item, off = read(tvb, off, limit, depth + 1)
    items[#items + 1] = item
  end
  node.v = items
  node.len = off - node.off
  return node, off
end

local function sized(tvb, node, off, limit, hdr, n, kind)
  need(limit, off, hdr + n)
  node.k, node.voff, node.vlen, node.len = kind, off + hdr, n, hdr + n
  if kind == "str" then
    node.v = n > 0 and tvb(off + hdr, n):string() or ""
  end
  return node, off + hdr + n
end

read = function(tvb, off, limit, depth)
  if depth > MAX_DEPTH then fail("nested too deep") end
  need(limit, off, 1)
  local b = tvb(off, 1):uint()
  local node = { off = off }
  if b <= 0x7f then
    node.k, node.v, node.voff, node.vlen, node.len = "uint", b, off, 1, 1
    return node, off + 1
  elseif b >= 0xe0 then
    node.k, node.v, node.len = "int", b - 256, 1
    return node, off + 1
  elseif b >= 0xa0 and b <= 0xbf then
    return sized(tvb, node, off, limit, 1, b - 0xa0, "str")
  elseif b >= 0x90 and b <= 0x9f then
    node.k = "arr"
    return container(tvb, node, off + 1, limit, b - 0x90, false, depth)
  elseif b >= 0x80 and b <= 0x8f then
    node.k = "map"
    return container(tvb, node, off + 1, limit, b - 0x80, true, depth)
  elseif b == 0xc0 then
    node.k, node.len = "nil", 1
    return node, off + 1
  elseif b == 0xc2 or b == 0xc3 then
    node.k, node.v, node.len = "bool", b == 0xc3, 1
    return node, off + 1
  elseif b >= 0xcc and b <= 0xcf then
    local n = 2 ^ (b - 0xcc)
    need(limit, off, 1 + n)
    node.k, node.voff, node.vlen, node.len = "uint", off + 1, n, 1 + n
    node.v = n == 8 and tvb(off + 1, 8):uint64() or tvb(off + 1, n):uint()
    return node, off + 1 + n
  elseif b >= 0xd0 and b <= 0xd3 then
    local n = 2 ^ (b - 0xd0)
    need(limit, off, 1 + n)
    node.k, node.voff, node.vlen, node.len = "int", off + 1, n, 1 + n
    node.v = n == 8 and tvb(off + 1, 8):int64() or tvb(off + 1, n):int()
    return node, off + 1 + n
  elseif b == 0xca or b == 0xcb then
    local n = b == 0xca and 4 or 8
    need(limit, off, 1 + n)
    node.k, node.v, node.len = "float", tvb(off + 1, n):float(), 1 + n
    return node, off + 1 + n
  elseif b == 0xd9 or b == 0xc4 then
    need(limit, off, 2)
    return sized(tvb, node, off, limit, 2, tvb(off + 1, 1):uint(), b == 0xd9 and "str" or "bin")
  elseif b == 0xda or b == 0xc5 then
    need(limit, off, 3)
    return sized(tvb, node, off, limit, 3, tvb(off + 1, 2):uint(), b == 0xda and "str" or "bin")
  elseif b == 0xdb or b == 0xc6 then
    need(limit, off, 5)
    return sized(tvb, node, off, limit, 5, tvb(off + 1, 4):uint(), b == 0xdb and "str" or "bin")
  elseif b == 0xdc or b == 0xdd then
    local n = b == 0xdc and 2 or 4
    need(limit, off, 1 + n)
    node.k = "arr"
    return container(tvb, node, off + 1 + n, limit, tvb(off + 1, n):uint(), false, depth)
  elseif b == 0xde or b == 0xdf then
    local n = b == 0xde and 2 or 4
    need(limit, off, 1 + n)
    node.k = "map"
    return container(tvb, node, off + 1 + n, limit, tvb(off + 1, n):uint(), true, depth)
  elseif b >= 0xd4 and b <= 0xd8 then
    return sized(tvb, node, off, limit, 2, 2 ^ (b - 0xd4), "ext")
  elseif b >= 0xc7 and b <= 0xc9 then
    local n = 2 ^ (b - 0xc7)
    need(limit, off, 1 + n)
    return sized(tvb, node, off, limit, 2 + n, tvb(off + 1, n):uint(), "ext")
  end
  fail(string.format("byte 0x%02x is not msgpack", b))
end

-- ---- checks and rendering ---------------------------------------------------------------

local function bad(kind, detail)
  error({ kind = kind, detail = detail }, 0)
end

local function is_uint(n)
  -- A wire integer stays below 2**62 (sync/wire.py MAX_WIRE_INT).
  if not n or n.k ~= "uint" then return false end
  return n.vlen < 8 or n.v < UInt64(0, 0x40000000)
end

local function range(tvb, n)
  return tvb(n.off, n.len)
end

local function value_range(tvb, n)
  return tvb(n.voff, n.vlen)
end

local function hex(tvb, n)
  if n.vlen == 0 then return "" end
  return tvb(n.voff, n.vlen):bytes():tohex():lower()
end

local function render(tvb, n)
  -- Like `json.dumps(jsonable(value))` in sync/decode.py: bytes as hex strings.
  if n.k == "nil" then return "null" end
  if n.k == "bool" then return tostring(n.v) end
  if n.k == "str" then return '"' .. n.v .. '"' end
  if n.k == "bin" or n.k == "ext" then return '"' .. hex(tvb, n) .. '"' end
  if n.k == "arr" then
    local parts = {}
    for i, x in ipairs(n.v) do parts[i] = render(tvb, x) end
    return "[" .. table.concat(parts, ", ") .. "]"
  end
  if n.k == "map" then
    local parts = {}
    for i = 1, #n.v, 2 do
      parts[#parts + 1] = '"' .. render(tvb, n.v[i]):gsub('^"(.*)"$', "%1") .. '": ' .. render(tvb, n.v[i + 1])
    end
    return "{" .. table.concat(parts, ", ") .. "}"
  end
  return tostring(n.v)
end

local function add_uint(tree, field, tvb, n)
  return tree:add(field, value_range(tvb, n))
end

local function record(tree, tvb, a)
  if not a or a.k ~= "arr" or #a.v ~= 7 then bad("bad-payload", "record is not a 7-field array") end
  local key, scope, owner, version, bucket, data, deleted = unpack(a.v)
  if key.k ~= "bin" or not is_uint(scope) or not SCOPES[scope.v] or owner.k ~= "str"
      or not is_uint(version) or (bucket.k ~= "uint" and bucket.k ~= "int") or data.k ~= "arr"
      or deleted.k ~= "bool" then
    bad("bad-payload", "record field of the wrong type")
  end
  local bucket_v = bucket.v
  if type(bucket_v) ~= "number" or bucket_v < -2147483648 or bucket_v >= 2147483648 then
    bad("bad-payload", "record field of the wrong type")
  end
  local t = tree:add(f.record, range(tvb, a))
  t:set_text(string.format("Record key=%s owner=%s version=%s scope=%s bucket=%d%s", hex(tvb, key), owner.v,
    tostring(version.v), SCOPES[scope.v], bucket_v, deleted.v and " DELETED" or ""))
  t:add(f.rec_key, value_range(tvb, key))
  t:add(f.rec_scope, range(tvb, scope), SCOPES[scope.v])
  t:add(f.rec_owner, value_range(tvb, owner))
  add_uint(t, f.rec_version, tvb, version)
  t:add(f.rec_bucket, range(tvb, bucket), bucket_v)
  t:add(f.rec_deleted, range(tvb, deleted), deleted.v)
  t:add(f.rec_data, range(tvb, data), render(tvb, data))
end

local function payload(tree, tvb, code, pl)
  local name = MSG[code]
  local summary = ""
  if code == 1 or code == 2 then
    if pl.k ~= "arr" or #pl.v ~= 2 or pl.v[2].k ~= "bool" then bad("bad-payload", "heartbeat: expected [mode, ready]") end
    local mode = pl.v[1]
    if not is_uint(mode) or not MODES[mode.v] then bad("bad-payload", "heartbeat: unknown mode") end
    tree:add(f.mode, range(tvb, mode), MODES[mode.v])
    tree:add(f.ready, range(tvb, pl.v[2]), pl.v[2].v)
    summary = string.format(" mode=%s ready=%s", MODES[mode.v], tostring(pl.v[2].v))
  elseif code == 3 then
    if pl.k ~= "nil" then bad("bad-payload", "ack: payload must be nil") end
  elseif code == 5 or code == 11 then
    if pl.k ~= "arr" or #pl.v ~= 0 then bad("bad-payload", name:lower() .. ": payload must be an empty array") end
  elseif code == 6 or code == 7 then
    if pl.k ~= "arr" or #pl.v ~= 1 or not is_uint(pl.v[1]) then bad("bad-payload", name:lower() .. ": expected [count]") end
    add_uint(tree, f.count, tvb, pl.v[1])
    summary = " count=" .. tostring(pl.v[1].v)
  elseif code == 4 then
    if pl.k ~= "arr" or #pl.v ~= 2 then bad("bad-payload", "records: expected [trigger, blob]") end
    local trig, blob = pl.v[1], pl.v[2]
    if not is_uint(trig) or not TRIGGERS[trig.v] then bad("bad-payload", "records: unknown trigger") end
    if blob.k ~= "bin" then bad("bad-payload", "records: blob is not bytes") end
    tree:add(f.trigger, range(tvb, trig), TRIGGERS[trig.v])
    local ok, items, stop = pcall(read, tvb, blob.voff, blob.voff + blob.vlen, 1)
    if not ok then bad("bad-payload", "records blob: " .. tostring(items)) end
    if stop ~= blob.voff + blob.vlen then bad("bad-payload", "records blob: extra data") end
    if items.k ~= "arr" then bad("bad-payload", "records blob is not an array") end
    tree:add(f.count, range(tvb, blob), #items.v)
    for _, a in ipairs(items.v) do record(tree, tvb, a) end
    summary = string.format(" trigger=%s records=%d", TRIGGERS[trig.v], #items.v)
  elseif code == 8 then
    if pl.k ~= "arr" or #pl.v ~= 1 or pl.v[1].k ~= "bin" then bad("bad-payload", "state request: expected [key]") end
    tree:add(f.key, value_range(tvb, pl.v[1]))
    summary = " key=" .. hex(tvb, pl.v[1])
  elseif code == 9 then
    if pl.k ~= "arr" or #pl.v ~= 2 or pl.v[1].k ~= "bin" then
      bad("bad-payload", "state reply: expected [key, record or nil]")
    end
    tree:add(f.key, value_range(tvb, pl.v[1]))
    local found = pl.v[2].k ~= "nil"
    tree:add(f.found, range(tvb, pl.v[2]), found)
    if found then record(tree, tvb, pl.v[2]) end
    summary = " key=" .. hex(tvb, pl.v[1]) .. (found and "" or " (not found)")
  elseif code == 10 then
    if pl.k ~= "arr" or #pl.v ~= 5 then bad("bad-view", "expected [epoch, proposer, states, owners, groups]") end
    local epoch, proposer, states, owners, groups = unpack(pl.v)
    local ok = is_uint(epoch) and proposer.k == "str" and states.k == "arr" and owners.k == "arr" and groups.k == "arr"
    for _, s in ipairs(ok and states.v or {}) do ok = ok and is_uint(s) and STATES[s.v] ~= nil end
    for _, o in ipairs(ok and owners.v or {}) do ok = ok and (o.k == "nil" or o.k == "str") end
    for _, g in ipairs(ok and groups.v or {}) do
      ok = ok and g.k == "arr"
      for _, m in ipairs(ok and g.v or {}) do ok = ok and m.k == "str" end
    end
    if not ok then bad("bad-view", "a view field of the wrong type") end
    add_uint(tree, f.view_epoch, tvb, epoch)
    tree:add(f.proposer, range(tvb, proposer), proposer.v)
    for i, s in ipairs(states.v) do
      tree:add(f.member_state, range(tvb, s), STATES[s.v]):set_text("Member " .. i .. ": " .. STATES[s.v])
    end
    for b, o in ipairs(owners.v) do
      local owner = o.k == "nil" and "none" or o.v
      tree:add(f.bucket_owner, range(tvb, o), owner):set_text("Bucket " .. b .. " owner: " .. owner)
    end
    for i, g in ipairs(groups.v) do
      local names = {}
      for j, m in ipairs(g.v) do names[j] = m.v end
      local group = table.concat(names, ",")
      tree:add(f.backup_group, range(tvb, g), group):set_text("Member " .. i .. " backed up by: " .. group)
    end
    summary = string.format(" view_epoch=%s proposer=%s", tostring(epoch.v), proposer.v)
  elseif code == 12 or code == 13 then
    -- KEYS: [first, last, [key, ...]] (an owner's key sweep); WANT: [key, ...] (at least one).
    local keys = pl
    if code == 12 then
      if pl.k ~= "arr" or #pl.v ~= 3 or pl.v[1].k ~= "bool" or pl.v[2].k ~= "bool" or pl.v[3].k ~= "arr" then
        bad("bad-payload", "keys: expected [first, last, [key, ...]]")
      end
      keys = pl.v[3]
    elseif pl.k ~= "arr" or #pl.v == 0 then
      bad("bad-payload", "want: expected [key, ...]")
    end
    for _, k in ipairs(keys.v) do
      if k.k ~= "bin" then bad("bad-payload", name:lower() .. ": a key is not bytes") end
    end
    tree:add(f.count, range(tvb, keys), #keys.v)
    for _, k in ipairs(keys.v) do tree:add(f.key, value_range(tvb, k)) end
    summary = " keys=" .. tostring(#keys.v)
    if code == 12 then
      summary = summary .. (pl.v[1].v and " first" or "") .. (pl.v[2].v and " last" or "")
    end
  end
  return summary
end

-- ---- the dissector ---------------------------------------------------------------------

local key_bytes, key_error = nil, nil
local hmac_seen = {} -- "frame:offset" -> "ok" or "bad", for the current key and file

function p.init()
  hmac_seen = {}
end

local function load_key()
  key_bytes, key_error = nil, nil
  if p.prefs.key ~= "" then
    key_bytes = unhex(p.prefs.key)
    if not key_bytes then key_error = "the key preference is not hex" end
  end
end

local function malformed(t, pinfo, reason)
  t:add(f.malformed, reason)
  t:add_proto_expert_info(ef_malformed, "Malformed: " .. reason)
  t:append_text(" [MALFORMED: " .. reason .. "]")
  pinfo.cols.info:append(" MALFORMED: " .. reason)
end

function p.dissector(tvb, pinfo, tree)
  local total = tvb:len()
  pinfo.cols.protocol = "SYNCWALL"
  pinfo.cols.info:set("")
  local t = tree:add(p, tvb(), "syncwall sync frame")
  if total < tvb:reported_len() then
    malformed(t, pinfo, "truncated by the capture (snap length)")
    return total
  end
  if total < MIN_FRAME_BYTES then
    malformed(t, pinfo, "short: " .. total .. " bytes")
    return total
  end
  local body_len = total - TAG_BYTES
  local tag_item = t:add(f.hmac, tvb(body_len, TAG_BYTES))
  local status
  if key_error then
    status = "not checked (" .. key_error .. ")"
    t:add_proto_expert_info(ef_no_key, key_error)
  elseif key_bytes then
    -- Pure-Lua SHA-256 is slow and Wireshark dissects a frame again on every click: once per frame.
    local seen = pinfo.number .. ":" .. tvb:offset()
    status = hmac_seen[seen]
    if not status then
      status = hmac_sha256(key_bytes, tvb:raw(0, body_len)) == tvb:raw(body_len, TAG_BYTES) and "ok" or "bad"
      hmac_seen[seen] = status
    end
    if status == "bad" then tag_item:add_proto_expert_info(ef_bad_hmac) end
  else
    status = "not checked"
    tag_item:add_proto_expert_info(ef_no_key)
  end
  t:add(f.hmac_status, tvb(body_len, TAG_BYTES), status)

  local ok, top, stop = pcall(read, tvb, 0, body_len, 0)
  if not ok then
    malformed(t, pinfo, "undecodable: " .. tostring(top))
    return total
  end
  if stop ~= body_len then
    malformed(t, pinfo, "undecodable: extra data after the frame")
    return total
  end
  if top.k ~= "arr" or #top.v ~= 10 then
    malformed(t, pinfo, "undecodable: not a 10-field array")
    return total
  end
  local version, lab, sender, inc, to_inc, epoch, seq, ack, code, pl = unpack(top.v)
  if not is_uint(version) or version.v ~= WIRE_VERSION then
    malformed(t, pinfo, "bad-version: " .. render(tvb, version))
    return total
  end
  add_uint(t, f.version, tvb, version)
  if lab.k ~= "str" or sender.k ~= "str" then
    malformed(t, pinfo, "undecodable: lab or sender is not a string")
    return total
  end
  t:add(f.lab, range(tvb, lab), lab.v)
  if p.prefs.lab_id ~= "" and lab.v ~= p.prefs.lab_id then
    t:add_proto_expert_info(ef_other_lab, "lab id " .. lab.v .. ", expected " .. p.prefs.lab_id)
  end
  t:add(f.sender, range(tvb, sender), sender.v)
  for _, h in ipairs({ inc, to_inc, epoch, seq, ack }) do
    if not is_uint(h) then
      malformed(t, pinfo, "undecodable: bad header field")
      return total
    end
  end
  add_uint(t, f.incarnation, tvb, inc)
  add_uint(t, f.to_inc, tvb, to_inc)
  add_uint(t, f.epoch, tvb, epoch)
  add_uint(t, f.seq, tvb, seq)
  add_uint(t, f.ack, tvb, ack)
  local name = is_uint(code) and MSG[code.v]
  local head = string.format("from %s seq=%s ack=%s epoch=%s", sender.v, tostring(seq.v), tostring(ack.v),
    tostring(epoch.v))
  if not name then
    t:set_text("syncwall unknown type " .. render(tvb, code) .. " " .. head)
    pinfo.cols.info:set("unknown type " .. render(tvb, code) .. " " .. head)
    malformed(t, pinfo, "unknown-type: " .. render(tvb, code))
    return total
  end
  add_uint(t, f.type, tvb, code)
  t:add(f.type_name, range(tvb, code), name)
  t:set_text("syncwall " .. name .. " " .. head .. " hmac=" .. status)
  pinfo.cols.info:set(name .. " " .. head)
  local pt = t:add(f.payload, range(tvb, pl))
  local pok, summary = pcall(payload, pt, tvb, code.v, pl)
  if not pok then
    local e = summary
    malformed(t, pinfo, type(e) == "table" and (e.kind .. ": " .. e.detail) or ("bad-payload: " .. tostring(e)))
    return total
  end
  pt:set_text("Payload:" .. (summary ~= "" and summary or " (empty)"))
  pinfo.cols.info:append(summary)
  return total
end

local udp = DissectorTable.get("udp.port")
local current_port = p.prefs.port
udp:add(current_port, p)

function p.prefs_changed()
  hmac_seen = {}
  if p.prefs.port ~= current_port then
    udp:remove(current_port, p)
    current_port = p.prefs.port
    udp:add(current_port, p)
  end
  load_key()
end

load_key()
