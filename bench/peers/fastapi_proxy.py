"""The hand-written streaming proxy the tutorials teach, as a bench target.

FastAPI's StreamingResponse relays the upstream's chat-completions stream
line by line, through one shared httpx.AsyncClient, in one uvicorn worker:
what the tutorials that inspired caddy-llmstream write (FastAPI
StreamingResponse over an OpenAI stream). It is set up the way a careful
user would run it in production, so that the bench measures the approach
and not a mistake: no connection-pool cap (httpx's default of 100 would
queue the 101st stream), no read timeout shorter than a slow model's pause,
no access log (nginx's and Caddy's are off too), and the open-file limit
raised to its hard limit, as a service manager's LimitNOFILE would.

Run it by hand with Debian's python3-fastapi, python3-uvicorn and
python3-httpx:

    /usr/bin/python3 bench/peers/fastapi_proxy.py \
        --upstream http://127.0.0.1:8081/v1/chat/completions --port 8080
"""

import argparse
import resource

import anyio
import httpx
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

app = FastAPI()
upstream_url = ""
client: httpx.AsyncClient


@app.on_event("startup")
async def open_client():
    global client
    client = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=None),
        timeout=httpx.Timeout(10.0, read=300.0),
    )


@app.on_event("shutdown")
async def close_client():
    await client.aclose()


@app.post("/v1/chat/completions")
async def chat_completions(request: Request):
    body = await request.body()
    req = client.build_request(
        "POST", upstream_url, content=body,
        headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
    )
    upstream = await client.send(req, stream=True)

    async def relay():
        # Starlette cancels this generator when the client disconnects, and
        # the finally closes the upstream so the model stops generating.
        # Shielded, or the cancellation interrupts the close itself.
        finished = False
        try:
            async for line in upstream.aiter_lines():
                # httpx before 0.24 (Debian 12's) keeps the line end; later
                # ones strip it.
                yield line if line.endswith("\n") else line + "\n"
            finished = True
        finally:
            with anyio.CancelScope(shield=True):
                if not finished:
                    # httpcore before 0.17.3 (Debian 12's 0.16) loses its own
                    # close to the cancellation and marks the response closed
                    # anyway (encode/httpcore#642): the upstream would stream
                    # on to nobody. Its network_stream extension reaches the
                    # socket.
                    ns = upstream.extensions.get("network_stream")
                    if ns is not None:
                        await ns.aclose()
                await upstream.aclose()

    return StreamingResponse(
        relay(),
        status_code=upstream.status_code,
        media_type=upstream.headers.get("content-type", "text/event-stream"),
        headers={"Cache-Control": "no-cache"},
    )


def main():
    global upstream_url
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--upstream", required=True, help="the upstream's chat-completions URL")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    upstream_url = args.upstream

    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    uvicorn.run(app, host=args.host, port=args.port, workers=1,
                access_log=False, log_level="warning", backlog=16384)


if __name__ == "__main__":
    main()
