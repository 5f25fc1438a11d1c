-- midirwkv for Ardour 7 (Lua 5.3): the part of the editor action that needs no window.
--
-- This chunk returns a table of functions. `midirwkv daw install-ardour` pastes it into the editor action
-- (the action's factory cannot keep upvalues: Ardour stores it as bytecode), and the headless test runs it
-- under `ardour7-lua` with the same calls the action makes:
--
--   local job = core.prepare (Session, region, first_bar, last_bar, {context = 16})
--       writes the session's MIDI tracks around the bars to a Standard MIDI File with the session's tempo
--       map and meters (job.midi) and finds the region's track in it (job.track, a 0-based Score index)
--   local measured = core.measure (config, job)           -- per-bar controls of the original bars
--   local variations = core.generate (config, job, params) -- runs the engine; one note list per variation
--   local regions = core.apply (Session, job, variations, {pick = "all" | k, mute = bool})
--       one new region per variation on the region's track, named "midirwkv vK": a copy of the original
--       region whose notes inside the bars are the variation's; the original region is not modified, and
--       one Undo removes the new regions
--
-- Errors are raised as strings starting with "midirwkv: " (the action shows them in a dialog).
-- Times: Ardour ticks (Temporal.ticks_per_beat per quarter note); the MIDI file uses the same resolution,
-- so no time is rounded on the way out or back.

local M = {}

M.TPQ = 1920            -- ticks per quarter of the exported file (= Temporal.ticks_per_beat in Ardour 7)
M.CONTEXT = 16          -- bars of context each side of the selection (the engine's default)
M.PREFIX = "midirwkv v" -- name of the regions brought back

local function fail (message)
	error ("midirwkv: " .. message, 0)
end
M.fail = fail

--- Fail with the fix when Lua's io and os libraries are missing (Ardour's Lua sandbox removes them).
function M.need_io ()
	if not (io and io.popen and io.open and os and os.tmpname and os.remove) then
		fail ("Lua's io and os libraries are off (Ardour's Lua sandbox, option sandbox-all-lua-scripts); "
		      .. "midirwkv needs them to write the MIDI file and run the engine: turn that option off")
	end
end

-- ------------------------------------------------------------------------------------------------ time

local function ticks_of_beats (b)
	-- Temporal.Beats prints as "quarters:ticks"; its ticks are not bound in Ardour 7.3's Lua
	local q, t = b:str ():match ("^(%-?%d+):(%-?%d+)$")
	if not q then fail ("cannot read a beat time: " .. b:str ()) end
	return tonumber (q) * Temporal.ticks_per_beat + tonumber (t)
end
M.ticks_of_beats = ticks_of_beats

local function beats_of_ticks (ticks)
	local tpb = Temporal.ticks_per_beat
	return Temporal.Beats (ticks // tpb, ticks % tpb)
end
M.beats_of_ticks = beats_of_ticks

--- Ardour ticks (from the session start) where bar `bar` (1-based) starts.
function M.bar_tick (bar)
	local tm = Temporal.TempoMap.read ()
	return ticks_of_beats (tm:quarters_at_bbt (Temporal.BBT_TIME (bar, 1, 0)))
end

--- The bar (1-based) that holds the Ardour tick `ticks`.
function M.bar_at (ticks)
	local tm = Temporal.TempoMap.read ()
	return tm:bbt_at (Temporal.timepos_t.from_ticks (ticks)).bars
end

--- First and last bar (1-based, inclusive) a region covers.
function M.region_bars (region)
	local first = region:position ():ticks ()
	local last = first + region:length ():ticks () - 1
	return M.bar_at (first), M.bar_at (math.max (first, last))
end

-- ------------------------------------------------------------------------------------------------ session

--- The session's MIDI tracks in editor order: list of {route, track, name}.
function M.midi_tracks (session)
	local out = {}
	for t in session:get_tracks ():iter () do
		if not t:to_track ():to_midi_track ():isnil () then
			out[#out + 1] = { route = t, track = t:to_track (), name = t:name (),
			                  order = t:presentation_info_ptr ():order () }
		end
	end
	table.sort (out, function (a, b) return a.order < b.order end)
	return out
end

local function region_span (r)
	local pos = r:position ():ticks ()
	return pos, pos + r:length ():ticks ()
end

--- The notes one hears on a playlist: {t, len, pitch, vel, ch} in Ardour ticks from the session start.
-- Muted regions are skipped, and a note is dropped where an opaque region on a higher layer covers it.
function M.playlist_notes (playlist, lo, hi)
	local regions = {}
	for r in playlist:region_list ():iter () do
		local mr = r:to_midiregion ()
		if not mr:isnil () and not r:muted () then
			local a, b = region_span (r)
			regions[#regions + 1] = { r = r, mr = mr, a = a, b = b, layer = r:layer (), opaque = r:opaque () }
		end
	end
	local notes = {}
	for _, it in ipairs (regions) do
		local origin = it.a - it.r:start ():ticks ()   -- session tick of the source's time 0
		for n in ARDOUR.LuaAPI.note_list (it.mr:model ()):iter () do
			local t = origin + ticks_of_beats (n:time ())
			if t >= it.a and t < it.b and (not lo or (t >= lo and t < hi)) then
				local hidden = false
				for _, o in ipairs (regions) do
					if o.layer > it.layer and o.opaque and t >= o.a and t < o.b then hidden = true break end
				end
				if not hidden then
					local len = math.min (ticks_of_beats (n:length ()), it.b - t)
					notes[#notes + 1] = { t = t, len = math.max (1, len), pitch = n:note (),
					                      vel = n:velocity (), ch = n:channel () }
				end
			end
		end
	end
	table.sort (notes, function (x, y) if x.t ~= y.t then return x.t < y.t end return x.pitch < y.pitch end)
	return notes
end

-- ------------------------------------------------------------------------------------------------ SMF

local function vlq (n)
	local bytes = { string.char (n & 0x7f) }
	n = n >> 7
	while n > 0 do
		table.insert (bytes, 1, string.char ((n & 0x7f) | 0x80))
		n = n >> 7
	end
	return table.concat (bytes)
end

local function chunk (kind, body)
	return kind .. string.pack (">I4", #body) .. body
end

local function track_chunk (events)
	-- events: {t, order, bytes}; sorted by time, then order (note offs before note ons at one time)
	table.sort (events, function (a, b)
		if a.t ~= b.t then return a.t < b.t end
		if a.order ~= b.order then return a.order < b.order end
		return a.seq < b.seq
	end)
	local out, now = {}, 0
	for _, e in ipairs (events) do
		out[#out + 1] = vlq (e.t - now) .. e.bytes
		now = e.t
	end
	out[#out + 1] = vlq (0) .. "\255\47\0"
	return chunk ("MTrk", table.concat (out))
end

local function meta (kind, data)
	return "\255" .. string.char (kind) .. vlq (#data) .. data
end

--- Write a type-1 Standard MIDI File: tempo (list of {t, qpm}), meters ({t, num, den}), tracks ({name, ch,
-- notes}); times in ticks at M.TPQ per quarter.
function M.write_smf (path, tempos, meters, tracks)
	local conductor, seq = {}, 0
	local function add (list, t, order, bytes) seq = seq + 1 list[#list + 1] = { t = t, order = order, seq = seq, bytes = bytes } end
	for _, m in ipairs (meters) do
		local pow = 0
		while (1 << pow) < m.den do pow = pow + 1 end
		add (conductor, m.t, 0, meta (0x58, string.char (m.num, pow, 24, 8)))
	end
	for _, tp in ipairs (tempos) do
		local usec = math.floor (60000000 / tp.qpm + 0.5)
		add (conductor, tp.t, 1, meta (0x51, string.pack (">I3", usec)))
	end
	local chunks = { track_chunk (conductor) }
	for _, tr in ipairs (tracks) do
		local ev = {}
		add (ev, 0, 0, meta (0x03, tr.name))
		for _, n in ipairs (tr.notes) do
			add (ev, n.t, 2, string.char (0x90 | tr.ch, n.pitch, math.max (1, n.vel)))
			add (ev, n.t + n.len, 1, string.char (0x80 | tr.ch, n.pitch, 0))
		end
		chunks[#chunks + 1] = track_chunk (ev)
	end
	local header = chunk ("MThd", string.pack (">I2I2I2", 1, #chunks, M.TPQ))
	local f, err = io.open (path, "wb")
	if not f then fail ("cannot write " .. path .. ": " .. tostring (err)) end
	f:write (header, table.concat (chunks))
	f:close ()
end

--- Read a Standard MIDI File: {tpq, tracks = {{name, notes = {{t, len, pitch, vel, ch}}}}} (file ticks).
function M.read_smf (path)
	local f, err = io.open (path, "rb")
	if not f then fail ("cannot read " .. path .. ": " .. tostring (err)) end
	local data = f:read ("a")
	f:close ()
	if data:sub (1, 4) ~= "MThd" then fail (path .. " is not a MIDI file") end
	local hlen = string.unpack (">I4", data, 5)
	local _, ntrks, division = string.unpack (">I2I2I2", data, 9)
	if division & 0x8000 ~= 0 then fail (path .. " uses SMPTE time, not ticks per quarter") end
	local pos = 9 + hlen
	local song = { tpq = division, tracks = {} }
	local function read_vlq ()
		local n = 0
		repeat
			local b = data:byte (pos)
			pos = pos + 1
			n = (n << 7) | (b & 0x7f)
		until b < 0x80
		return n
	end
	for _ = 1, ntrks do
		if pos > #data then break end
		local kind = data:sub (pos, pos + 3)
		local len = string.unpack (">I4", data, pos + 4)
		pos = pos + 8
		local stop = pos + len
		if kind == "MTrk" then
			local tr = { name = "", notes = {} }
			local open, now, status = {}, 0, nil
			while pos < stop do
				now = now + read_vlq ()
				local b = data:byte (pos)
				if b >= 0x80 then status = b pos = pos + 1 end
				if status == 0xff then
					local mtype = data:byte (pos)
					pos = pos + 1
					local mlen = read_vlq ()
					if mtype == 0x03 and tr.name == "" then tr.name = data:sub (pos, pos + mlen - 1) end
					pos = pos + mlen
					status = nil
				elseif status == 0xf0 or status == 0xf7 then
					pos = pos + read_vlq ()
					status = nil
				elseif status then
					local hi, ch = status & 0xf0, status & 0x0f
					local d1 = data:byte (pos)
					local d2 = (hi ~= 0xc0 and hi ~= 0xd0) and data:byte (pos + 1) or nil
					pos = pos + (d2 and 2 or 1)
					if hi == 0x90 and d2 > 0 then
						local key = ch * 128 + d1
						open[key] = open[key] or {}
						table.insert (open[key], { t = now, vel = d2 })
					elseif hi == 0x80 or (hi == 0x90 and d2 == 0) then
						local stack = open[ch * 128 + d1]
						if stack and #stack > 0 then
							local on = table.remove (stack, 1)
							tr.notes[#tr.notes + 1] = { t = on.t, len = math.max (1, now - on.t), pitch = d1,
							                            vel = on.vel, ch = ch }
						end
					end
				else
					fail (path .. ": running status without a status byte")
				end
			end
			table.sort (tr.notes, function (x, y) if x.t ~= y.t then return x.t < y.t end return x.pitch < y.pitch end)
			song.tracks[#song.tracks + 1] = tr
		end
		pos = stop
	end
	return song
end

-- ------------------------------------------------------------------------------------------------ export

--- The session's tempo changes and meters over [0, hi) in Ardour ticks (tempo read once per quarter, meter
-- once per bar, so ramps come out as steps).
function M.tempo_map (last_bar)
	local tm = Temporal.TempoMap.read ()
	local tpb = Temporal.ticks_per_beat
	local tempos, meters = {}, {}
	for bar = 1, last_bar + 1 do
		local t = M.bar_tick (bar)
		if bar <= last_bar then
			local m = tm:meter_at (Temporal.timepos_t.from_ticks (t))
			local num, den = m:divisions_per_bar (), m:note_value ()
			local prev = meters[#meters]
			if not prev or prev.num ~= num or prev.den ~= den then
				meters[#meters + 1] = { t = t, num = num, den = den }
			end
		end
	end
	local stop = M.bar_tick (last_bar + 1)
	for t = 0, stop - 1, tpb do
		local qpm = tm:tempo_at (Temporal.timepos_t.from_ticks (t)):quarter_notes_per_minute ()
		local prev = tempos[#tempos]
		if not prev or math.abs (prev.qpm - qpm) > 1e-6 then tempos[#tempos + 1] = { t = t, qpm = qpm } end
	end
	return tempos, meters
end

--- Export the session around bars first..last of `region`'s track and describe the job.
-- opts.context: bars each side (default M.CONTEXT); opts.folder: where the files go (default a new
-- temporary name). The track of `region` must be a MIDI track.
function M.prepare (session, region, first_bar, last_bar, opts)
	opts = opts or {}
	M.need_io ()
	local mr = region:to_midiregion ()
	if mr:isnil () then fail ("the selected region is not a MIDI region") end
	if first_bar < 1 or last_bar < first_bar then
		fail (string.format ("bars %d-%d are not a range (first >= 1, last >= first)", first_bar, last_bar))
	end
	local ra, rb = region_span (region)
	local a, b = M.bar_tick (first_bar), M.bar_tick (last_bar + 1)
	if b <= ra or a >= rb then
		local r1, r2 = M.region_bars (region)
		fail (string.format ("bars %d-%d are outside the region (it covers bars %d-%d)", first_bar, last_bar, r1, r2))
	end
	local context = opts.context or M.CONTEXT
	local lo_bar = math.max (1, first_bar - context)
	local hi_bar = last_bar + context
	local lo, hi = M.bar_tick (lo_bar), M.bar_tick (hi_bar + 1)

	local playlist = region:playlist ()
	local target_name
	local tracks, index, target = {}, 0, nil
	for _, mt in ipairs (M.midi_tracks (session)) do
		local notes = M.playlist_notes (mt.track:playlist (), lo, hi)
		local mine = mt.track:playlist ():sameinstance (playlist)
		if mine then target_name = mt.name end
		if #notes > 0 then
			-- one channel per track (the first note's: drums on channel 10 stay drums)
			local ch = notes[1].ch
			tracks[#tracks + 1] = { name = mt.name, ch = ch, notes = notes }
			if mine then target = index end
			index = index + 1
		end
	end
	if not target_name then fail ("the region's playlist belongs to no MIDI track of this session") end
	if not target then
		fail ("track '" .. target_name .. "' has no notes within " .. context .. " bars of the selection; "
		      .. "the engine needs some notes on the track to continue")
	end
	local tempos, meters = M.tempo_map (hi_bar)
	local base = opts.folder or os.tmpname ()
	if not opts.folder then os.remove (base) end
	local job = {
		midi = base .. "_in.mid", out = base .. "_out.mid", controls = base .. "_controls.json", base = base,
		track = target, track_name = target_name, first_bar = first_bar, last_bar = last_bar,
		context = context, span = { a, b }, region = region, playlist = playlist,
		n_tracks = #tracks,
	}
	M.write_smf (job.midi, tempos, meters, tracks)
	return job
end

-- ------------------------------------------------------------------------------------------------ engine

local function quote (s)
	return "'" .. tostring (s):gsub ("'", "'\\''") .. "'"
end
M.quote = quote

local function run (command)
	M.need_io ()
	local p = io.popen (command .. " 2>&1", "r")
	if not p then fail ("cannot run: " .. command) end
	local output = p:read ("a")
	local ok, _, code = p:close ()
	return ok, output, code
end

local function engine_error (output, code)
	local lines = {}
	for line in output:gmatch ("[^\n]+") do lines[#lines + 1] = line end
	local tail = table.concat (lines, "\n", math.max (1, #lines - 8))
	fail ("the engine failed (exit status " .. tostring (code) .. "):\n" .. tail)
end

--- The measured per-bar controls of the job's bars: list of {bar, density, poly_min, poly_max, durations}.
-- config.command: the midirwkv command (a shell word list, e.g. "/home/me/.venv/bin/midirwkv").
function M.measure (config, job)
	local command = string.format ("%s daw controls %s --track %d --bars %d-%d", config.command, quote (job.midi),
	                               job.track, job.first_bar, job.last_bar)
	local ok, output, code = run (command)
	if not ok then engine_error (output, code) end
	local bars = {}
	for line in output:gmatch ("[^\n]+") do
		local bar, d, pmin, pmax, durs = line:match ("^bar (%d+) density (%d+) polyphony (%d+)%-(%d+) durations (%S+)")
		if bar then
			bars[#bars + 1] = { bar = tonumber (bar), density = tonumber (d), poly_min = tonumber (pmin),
			                    poly_max = tonumber (pmax), durations = durs }
		end
	end
	if #bars ~= job.last_bar - job.first_bar + 1 then engine_error (output, code) end
	return bars
end

--- A summary of measured bars for one set of controls: rounded mean density, widest polyphony, the
-- durations of any bar.
function M.summary (bars)
	local total, pmin, pmax, seen = 0, 6, 1, {}
	for _, b in ipairs (bars) do
		total = total + b.density
		pmin = math.min (pmin, b.poly_min)
		pmax = math.max (pmax, b.poly_max)
		if b.durations ~= "none" then
			for d in b.durations:gmatch ("[^,]+") do seen[d] = true end
		end
	end
	local names = {}
	for _, d in ipairs ({ "whole", "half", "quarter", "eighth", "sixteenth" }) do
		if seen[d] then names[#names + 1] = d end
	end
	return { density = math.floor (total / math.max (1, #bars) + 0.5), poly_min = math.min (pmin, pmax),
	         poly_max = pmax, durations = #names > 0 and table.concat (names, ",") or "none" }
end

local function json_string (text)
	return '"' .. tostring (text):gsub ('[%c"\\]', function (c) return string.format ("\\u%04x", c:byte ()) end) .. '"'
end

--- Write per-bar controls as `midirwkv daw infill --controls` reads them: a JSON list, one object per bar
-- with density (number), polyphony ("1-3") and durations ("quarter,eighth" | "none"); nil keys are free.
function M.write_controls (path, bars)
	local items = {}
	for _, b in ipairs (bars) do
		local fields = {}
		if b.density ~= nil then fields[#fields + 1] = '"density": ' .. string.format ("%d", b.density) end
		if b.polyphony ~= nil then fields[#fields + 1] = '"polyphony": ' .. json_string (b.polyphony) end
		if b.durations ~= nil then fields[#fields + 1] = '"durations": ' .. json_string (b.durations) end
		items[#items + 1] = "{" .. table.concat (fields, ", ") .. "}"
	end
	local f, err = io.open (path, "w")
	if not f then fail ("cannot write " .. path .. ": " .. tostring (err)) end
	f:write ("[" .. table.concat (items, ", ") .. "]\n")
	f:close ()
end

--- The engine command for the job (see `midirwkv daw infill --help`).
-- params: variations, seed, and either density, polyphony ("1-3"), durations ("quarter,eighth" | "none"),
-- free_controls (every bar) or controls (per bar: list of {density, polyphony, durations}, one per bar);
-- config: command, server (URL, "" for the in-process engine only), model (folder or nil).
function M.command (config, job, params)
	local parts = { config.command, "daw", "infill", quote (job.midi), "--track", tostring (job.track),
	                "--bars", job.first_bar .. "-" .. job.last_bar, "--context", tostring (job.context),
	                "--variations", tostring (params.variations or 1), "-o", quote (job.out), "--quiet" }
	local function opt (flag, value) if value ~= nil and value ~= "" then parts[#parts + 1] = flag parts[#parts + 1] = quote (value) end end
	opt ("--seed", params.seed)
	opt ("--density", params.density)
	opt ("--polyphony", params.polyphony)
	opt ("--durations", params.durations)
	if params.free_controls then parts[#parts + 1] = "--free-controls" end
	if params.controls then opt ("--controls", job.controls) end
	if config.server == "" then parts[#parts + 1] = "--local" else opt ("--server", config.server) end
	opt ("--model", config.model)
	return table.concat (parts, " ")
end

--- Run the engine; returns one entry per variation: {k, path, notes} with notes in Ardour ticks from the
-- session start, only those starting inside the job's bars.
function M.generate (config, job, params)
	if params.controls then
		if #params.controls ~= job.last_bar - job.first_bar + 1 then
			fail (string.format ("%d per-bar controls for %d bars", #params.controls, job.last_bar - job.first_bar + 1))
		end
		M.write_controls (job.controls, params.controls)
	end
	local ok, output, code = run (M.command (config, job, params))
	if not ok then engine_error (output, code) end
	local variations = {}
	for k = 1, params.variations or 1 do
		local path = string.format ("%s_v%d.mid", job.out:gsub ("%.mid$", ""), k)
		local song = M.read_smf (path)
		local found
		for _, tr in ipairs (song.tracks) do
			if tr.name == job.track_name then found = tr break end
		end
		if not found then fail ("variation " .. k .. " has no track named '" .. job.track_name .. "'") end
		local notes, a, b = {}, job.span[1], job.span[2]
		for _, n in ipairs (found.notes) do
			local t = (n.t * M.TPQ) // song.tpq
			if t >= a and t < b then
				notes[#notes + 1] = { t = t, len = math.max (1, (n.len * M.TPQ) // song.tpq), pitch = n.pitch,
				                      vel = n.vel, ch = n.ch }
			end
		end
		variations[#variations + 1] = { k = k, path = path, notes = notes }
	end
	return variations
end

--- Remove the job's temporary files (the exported song, the controls, every variation file).
function M.cleanup (job)
	os.remove (job.midi)
	os.remove (job.controls)
	for k = 1, 16 do os.remove (string.format ("%s_v%d.mid", job.out:gsub ("%.mid$", ""), k)) end
end

-- ------------------------------------------------------------------------------------------------ import

--- Bring variations back as new regions on the job's track; the original region is not touched.
-- opts.pick: "all" (default) or one variation number; opts.mute: add them muted (to audition by unmuting
-- one). Returns the new regions.
--
-- Undo: adding the regions to the playlist is one command ("midirwkv: bars A-B"), so one Undo removes them
-- all. Ardour 7 cannot nest commands and each copy's notes are written by a command of its own, so those
-- come first (one history entry per copy, on copies no playlist holds yet).
function M.apply (session, job, variations, opts)
	opts = opts or {}
	local chosen = {}
	for _, v in ipairs (variations) do
		if opts.pick == nil or opts.pick == "all" or tonumber (opts.pick) == v.k then chosen[#chosen + 1] = v end
	end
	if #chosen == 0 then fail ("no variation " .. tostring (opts.pick)) end
	local region, playlist = job.region, job.playlist
	local a, b = job.span[1], job.span[2]
	local origin = region:position ():ticks () - region:start ():ticks ()
	local made = {}
	for _, v in ipairs (chosen) do
		-- a copy with its own MIDI source (fork): editing it never changes the original
		local copy = ARDOUR.RegionFactory.clone_region (region, true, true)
		local model = copy:to_midiregion ():model ()
		local diff = model:new_note_diff_command (M.PREFIX .. v.k)
		for n in ARDOUR.LuaAPI.note_list (model):iter () do
			local t = origin + ticks_of_beats (n:time ())
			if t >= a and t < b then diff:remove (n) end
		end
		for _, n in ipairs (v.notes) do
			diff:add (ARDOUR.LuaAPI.new_noteptr (n.ch, beats_of_ticks (n.t - origin), beats_of_ticks (n.len),
			                                     n.pitch, n.vel))
		end
		model:apply_command (session, diff)
		copy:set_name (M.PREFIX .. v.k)
		if opts.mute then copy:set_muted (true) end
		made[#made + 1] = copy
	end
	session:begin_reversible_command (string.format ("midirwkv: bars %d-%d", job.first_bar, job.last_bar))
	local ok, err = pcall (function ()
		playlist:to_stateful ():clear_changes ()
		for _, copy in ipairs (made) do playlist:add_region (copy, region:position (), 1, false) end
		session:add_stateful_diff_command (playlist:to_statefuldestructible ())
	end)
	if not ok then
		session:abort_reversible_command ()
		error (err, 0)
	end
	session:commit_reversible_command (nil)
	return made
end

return M
