#!/usr/bin/env bash
# Redraws docs/images/inferd-top.{txt,svg}: two `inferd serve` on loopback under a little traffic (the second with a
# one-request queue, so some of it is refused) and a third address where nothing answers, watched by `inferd top`
# in tmux; the text is `tmux capture-pane -p`, the SVG the same view rendered by rich. Run from the repository root.
set -euo pipefail
cd "$(dirname "$0")/../.."
A=18400 B=18401 DOWN=18402 IMAGES=docs/images
pids=()
cleanup() { tmux kill-session -t inferd-top 2>/dev/null || true; for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup EXIT
.venv/bin/inferd serve models --port $A --no-access-log & pids+=($!)
.venv/bin/inferd serve models --port $B --no-access-log --max-batch-size 1 --max-queue-size 1 & pids+=($!)
for port in $A $B; do
  until curl -sf "http://127.0.0.1:$port/v2/health/ready" >/dev/null; do sleep 0.5; done
done
.venv/bin/python - "$A" "$B" <<'PY' & pids+=($!)
"""Closed-loop clients: two posting a photo and one embedding text on the first server, four photos on the second."""
import io, sys, threading
import httpx
from PIL import Image
from skimage import data

buffer = io.BytesIO()
Image.fromarray(data.chelsea()).save(buffer, format="PNG")
photo = buffer.getvalue()

def photos(port: str) -> None:
    with httpx.Client(timeout=30) as client:
        while True:
            client.post(f"http://127.0.0.1:{port}/predict/efficientnet-lite0", files={"image": ("cat.png", photo, "image/png")})

def texts(port: str) -> None:
    with httpx.Client(timeout=30) as client:
        while True:
            client.post(f"http://127.0.0.1:{port}/embed/minilm-l6", json=["a cat on a sofa", "stock market news"])

a, b = sys.argv[1:]
workers = [(photos, a), (photos, a), (texts, a)] + [(photos, b)] * 4
for target, port in workers:
    threading.Thread(target=target, args=(port,), daemon=True).start()
threading.Event().wait()
PY
sleep 5
tmux new-session -d -s inferd-top -x 150 -y 24 \
  ".venv/bin/inferd top http://127.0.0.1:$A http://127.0.0.1:$B http://127.0.0.1:$DOWN"
sleep 8
# trailing blanks and the empty rows below the view are the terminal's, not the view's
tmux capture-pane -p -t inferd-top | sed -e 's/[[:space:]]*$//' | sed -e :a -e '/^\n*$/{$d;N;ba' -e '}' > $IMAGES/inferd-top.txt
.venv/bin/python - "$A" "$B" "$DOWN" <<'PY'
"""The same view, once, as an SVG (rich's Console.save_svg)."""
import asyncio, os, sys
from rich.console import Console
from inferd.cli.top_view import top_view
from inferd.serve.monitor.watch import Monitor

async def sample() -> list:
    monitor = Monitor([f"http://127.0.0.1:{port}" for port in sys.argv[1:]])
    await monitor.poll()
    await asyncio.sleep(1)
    samples = await monitor.poll()
    await monitor.aclose()
    return samples

console = Console(record=True, width=150, force_terminal=True, file=open(os.devnull, "w"))
console.print(top_view(asyncio.run(sample()), 1))
console.save_svg("docs/images/inferd-top.svg", title="inferd top")
PY
cat $IMAGES/inferd-top.txt
