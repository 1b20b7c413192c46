"""The floor: a bare aiohttp endpoint on uvloop, as the service runs, doing no work."""
import sys

import uvloop
from aiohttp import web


async def get(request):
    return web.json_response({"ok": True})


async def post(request):
    await request.read()
    return web.json_response({"ok": True}, status=201)


app = web.Application()
app.router.add_get("/peers", get)
app.router.add_post("/peers", post)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=uvloop.new_event_loop())
