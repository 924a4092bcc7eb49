-- A 16 KB form POST of ordinary fields (bench/plugins.sh): what a signup or a comment form
-- sends, many fields of text, none of them an attack.
local words = {"order", "select", "the", "best", "union", "station", "update", "profile",
  "drop", "me", "a", "line", "cat", "food", "echo", "dot", "O%27Brien", "caf%C3%A9", "50%25"}
local fields = {}
local size, i = 0, 0
while size < 16 * 1024 do
  local value = {}
  for j = 1, 12 do value[#value + 1] = words[(i * 7 + j) % #words + 1] end
  local field = "field" .. i .. "=" .. table.concat(value, "+")
  fields[#fields + 1] = field
  size = size + #field + 1
  i = i + 1
end
wrk.method = "POST"
wrk.body = table.concat(fields, "&")
wrk.headers["Content-Type"] = "application/x-www-form-urlencoded"
