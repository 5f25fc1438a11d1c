ardour {
	["type"]    = "EditorAction",
	name        = "midirwkv: regenerate bars",
	license     = "MIT",
	author      = "midirwkv",
	description = [[Regenerate the selected bars of a MIDI region with midirwkv (controllable bar infilling).
Select a MIDI region, or a time range on a MIDI track, then run this action. The session's MIDI tracks around
the bars go to the engine (the local `midirwkv serve` when it runs, else the midirwkv command); each variation
comes back as a new region "midirwkv vN" on the same track. The original region is never modified, and
Edit > Undo removes the new regions in one step.]]
}

function factory () return function ()
	-- `midirwkv daw install-ardour` writes the two lines below: the engine command and the core functions
	-- (ardour_core.lua); an action's factory is stored as bytecode, so nothing outside it survives.
	local config = {} --[[midirwkv:config]]
	local core = {} --[[midirwkv:core]]

	local TITLE = "midirwkv"

	local function message (text, kind)
		LuaDialog.Message (TITLE, text, kind or LuaDialog.MessageType.Error, LuaDialog.ButtonType.Close):run ()
	end

	-- the selection: a MIDI region, or a time range on a MIDI track (the top region there)
	local function selected ()
		local sel = Editor:get_selection ()
		local tm = Temporal.TempoMap.read ()
		if sel.time:start_time () < sel.time:end_time () then
			local a, b = sel.time:start_time ():ticks (), sel.time:end_time ():ticks ()
			for route in sel.tracks:routelist ():iter () do
				local track = route:to_track ()
				if not track:isnil () and not track:to_midi_track ():isnil () then
					local region = track:playlist ():top_region_at (sel.time:start_time ())
					if region:isnil () or region:to_midiregion ():isnil () then
						return nil, "no MIDI region under the range's start on track '" .. route:name () .. "'"
					end
					return region, core.bar_at (a), core.bar_at (math.max (a, b - 1))
				end
			end
		end
		for region in sel.regions:regionlist ():iter () do
			if not region:to_midiregion ():isnil () then
				local first, last = core.region_bars (region)
				return region, first, last
			end
		end
		return nil, "select a MIDI region, or a time range on a MIDI track, first"
	end

	local MAX_ROWS = 8   -- bars shown one by one in the dialog; a longer span gets one set for every bar

	local function polyphony (text, bar)
		local a, b = tostring (text):match ("^%s*(%d)%s*%-%s*(%d)%s*$")
		if not a then a = tostring (text):match ("^%s*(%d)%s*$") b = a end
		if not a or tonumber (a) < 1 or tonumber (b) > 6 or tonumber (a) > tonumber (b) then
			core.fail ("bar " .. bar .. ": polyphony must be MIN-MAX within 1-6, e.g. 1-3 (got '" .. tostring (text) .. "')")
		end
		return a .. "-" .. b
	end

	local current   -- the job whose temporary files are removed at the end, whatever happens

	local function run ()
		local region, first, last = selected ()
		if not region then message (first, LuaDialog.MessageType.Info) return end
		local job = core.prepare (Session, region, first, last, {})
		current = job
		local measured = core.measure (config, job)
		local summary = core.summary (measured)
		local r1, r2 = core.region_bars (region)
		local per_bar = #measured <= MAX_ROWS
		local fields = {
			{ type = "number", key = "first", title = "First bar", min = r1, max = r2, step = 1, digits = 0, default = first },
			{ type = "number", key = "last", title = "Last bar", min = r1, max = r2, step = 1, digits = 0, default = last },
			{ type = "number", key = "variations", title = "Variations", min = 1, max = 8, step = 1, digits = 0, default = 2 },
			{ type = "entry", key = "seed", default = "", title = "Seed (empty: random)" },
		}
		if per_bar then
			fields[#fields + 1] = { type = "heading", title = "Controls of each bar, measured in the original (notes 0-18, "
			                        .. "18 = 18 or more; polyphony MIN-MAX 1-6; note lengths whole,half,quarter,eighth,"
			                        .. "sixteenth or none). Changing the bars above asks for the new bars' measured controls." }
			for _, b in ipairs (measured) do
				local k = tostring (b.bar)
				fields[#fields + 1] = { type = "number", key = "d" .. k, title = "Bar " .. k .. ": notes", min = 0, max = 18, step = 1, digits = 0, default = b.density }
				fields[#fields + 1] = { type = "entry", key = "p" .. k, title = "Bar " .. k .. ": polyphony", default = b.poly_min .. "-" .. b.poly_max }
				fields[#fields + 1] = { type = "entry", key = "l" .. k, title = "Bar " .. k .. ": note lengths", default = b.durations }
			end
		else
			fields[#fields + 1] = { type = "heading", title = string.format ("Measured in bars %d-%d: %d notes a bar, polyphony %d-%d, %s",
			                                                                 first, last, summary.density, summary.poly_min, summary.poly_max, summary.durations) }
			fields[#fields + 1] = { type = "checkbox", key = "measured", default = true, title = "Ask for each bar's measured controls (ignore the values below)" }
			fields[#fields + 1] = { type = "number", key = "density", title = "Notes per bar (18 = 18 or more)", min = 0, max = 18, step = 1, digits = 0, default = summary.density }
			fields[#fields + 1] = { type = "entry", key = "polyphony", title = "Polyphony, every bar (MIN-MAX, 1-6)", default = summary.poly_min .. "-" .. summary.poly_max }
			fields[#fields + 1] = { type = "entry", key = "durations", title = "Note lengths, every bar (whole,half,quarter,eighth,sixteenth or none)", default = summary.durations }
		end
		local rv = LuaDialog.Dialog (TITLE .. ": regenerate bars of '" .. job.track_name .. "'", fields):run ()
		if not rv then return end
		local a, b = math.floor (rv.first), math.floor (rv.last)
		local same = a == first and b == last
		if not same then
			core.cleanup (job)
			job = core.prepare (Session, region, a, b, {})
			current = job
		end
		local params = { variations = math.floor (rv.variations) }
		if rv.seed ~= "" then params.seed = rv.seed end
		if per_bar and same then
			params.controls = {}
			for _, m in ipairs (measured) do
				local k = tostring (m.bar)
				params.controls[#params.controls + 1] = { density = math.floor (rv["d" .. k]),
				                                          polyphony = polyphony (rv["p" .. k], k), durations = rv["l" .. k] }
			end
		elseif not per_bar and not rv.measured then
			params.density = math.floor (rv.density)
			params.polyphony = polyphony (rv.polyphony, "every")
			params.durations = rv.durations
		end
		local variations = core.generate (config, job, params)
		-- nothing in the session has changed yet: the user picks what comes back
		local choices = { ["All, muted (unmute one to hear it)"] = "all" }
		for _, v in ipairs (variations) do
			choices[string.format ("Variation %d (%d notes in the bars)", v.k, #v.notes)] = v.k
		end
		local pick = LuaDialog.Dialog (TITLE .. ": bring back", {
			{ type = "dropdown", key = "pick", title = "Add as a new region on '" .. job.track_name .. "'", values = choices },
		}):run ()
		if pick then
			core.apply (Session, job, variations, { pick = pick.pick, mute = pick.pick == "all" })
		end
	end

	local ok, err = pcall (run)
	if current then core.cleanup (current) end
	if not ok then message (tostring (err)) end
end end

function icon (params) return function (ctx, width, height, fg)
	-- a small "v" over a bar line: the action's toolbar button
	ctx:set_source_rgba (ARDOUR.LuaAPI.color_to_rgba (fg))
	ctx:set_line_width (math.max (1, width / 14))
	ctx:move_to (width * 0.25, height * 0.3)
	ctx:line_to (width * 0.5, height * 0.75)
	ctx:line_to (width * 0.75, height * 0.3)
	ctx:stroke ()
	ctx:move_to (width * 0.12, height * 0.15)
	ctx:line_to (width * 0.12, height * 0.85)
	ctx:stroke ()
end end
