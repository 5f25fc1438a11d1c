"""Inside a DAW: the Ardour editor action (``ardour``, with its Lua files) and the engine calls DAW scripts
make (``client``: through the local server when it runs, else in this process)."""
