"""The data plane: the hot routes served on raw asyncio protocols (heads read by aiohttp's own
llhttp parser, without its request objects, middleware chain or router), everything else handed
to the aiohttp application on the same port.

It owns the client connections' framing and their hand-over, not the proxying: the handler it
runs is the aiohttp path's (passed in by app.py). May import config, wire, routing, lifecycle,
guard.
"""
