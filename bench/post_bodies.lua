-- Cycle through pre-signed registration bodies (each "%05d" length + raw envelope), one per request.
local bodies = {}
local i = 0

function init(args)
  local f = assert(io.open(args[1], "rb"))
  local data = f:read("*a")
  f:close()
  local pos = 1
  while pos <= #data do
    local n = tonumber(data:sub(pos, pos + 4))
    bodies[#bodies + 1] = data:sub(pos + 5, pos + 4 + n)
    pos = pos + 5 + n
  end
end

function request()
  i = i % #bodies + 1
  return wrk.format("POST", "/peers", {["Content-Type"] = "application/octet-stream"}, bodies[i])
end
