#!/bin/bash
# What a server-side H.264 encoder would cost per session (docs/performance.md, "Viewer on
# slow links"): TigerVNC's Xvnc does not encode H.264 (RFB encoding 50, which noVNC 1.7
# decodes through WebCodecs), so an encoder would grab the desktop's screen and encode it
# beside Xvnc. This times Debian's ffmpeg doing exactly that (x11grab from a real Xvnc,
# libx264, one thread as one session would get) while Chromium scrolls a page, and
# reports the CPU it took, the frames it delivered and the bitrate it produced.
#
#   apt-get install -y --no-install-recommends ffmpeg     # once; not needed by the server
#   bench/h264/run.sh [seconds per case, default 15]
#
# Runs on this machine only: Xvnc without a TCP listener, Chromium on a local file with the
# flags that keep it off the network.
set -euo pipefail
seconds=${1:-15}
for tool in Xvnc ffmpeg /usr/bin/chromium; do
    command -v "$tool" >/dev/null || { echo "bench/h264: $tool is not installed" >&2; exit 1; }
done

work=$(mktemp -d /tmp/ls-h264.XXXXXX)
pids=()
cleanup() {
    kill "${pids[@]}" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

Xvnc -displayfd 3 3>"$work/display" -geometry 1280x720 -depth 24 -SecurityTypes None \
    -rfbport -1 -rfbunixpath "$work/vnc.sock" -nolisten tcp -extension GLX 2>"$work/xvnc.log" &
pids+=($!)
until [ -s "$work/display" ]; do sleep 0.05; done
display=":$(head -n1 "$work/display")"

# Text that scrolls 5 px per animation frame, as bench/link's page does after its key `s`.
page='<!doctype html><style>body{margin:0;font:20px/1.5 serif;background:#fff;color:#222}p{margin:0 40px 12px}</style><body><script>
for (let i = 0; i < 400; i++) { const p = document.createElement("p"); p.textContent = i + ": " + "The quick brown fox jumps over the lazy dog, and keeps on scrolling past the viewer. ".repeat(2); document.body.append(p); }
let y = 0; (function step() { y = (y + 5) % (document.body.scrollHeight - innerHeight); scrollTo(0, y); requestAnimationFrame(step); })();
</script>'
printf '%s' "$page" > "$work/page.html"
DISPLAY=$display /usr/bin/chromium --no-sandbox --test-type --user-data-dir="$work/profile" \
    --disable-background-networking --disable-component-update --disable-sync --no-first-run --disable-quic \
    --disable-gpu --window-position=0,0 --window-size=1280,720 --kiosk "file://$work/page.html" \
    2>"$work/chromium.log" &
pids+=($!)
sleep 5   # Chromium up and scrolling
if [ -n "${H264_SNAPSHOT:-}" ]; then ffmpeg -hide_banner -loglevel error -f x11grab -video_size 1280x720 -i "$display" -frames:v 1 -y "$H264_SNAPSHOT"; fi

# One case: $1 its name, then ffmpeg's output options. Prints CPU (cores, from the
# process's user+system time over wall time), frames per second delivered, and bitrate.
run_case() {
    local name=$1; shift
    local out="$work/out.$RANDOM"
    local start end
    start=$(date +%s.%N)
    local TIMEFORMAT='%U %S'
    local cpu
    cpu=$( { time ffmpeg -hide_banner -loglevel error -nostdin -f x11grab -draw_mouse 0 -framerate 25 \
        -video_size 1280x720 -i "$display" -t "$seconds" -progress "$work/progress" "$@" -y "$out" >/dev/null 2>"$work/ffmpeg.log"; } 2>&1 )
    end=$(date +%s.%N)
    local frames bytes
    frames=$(grep '^frame=' "$work/progress" | tail -n1 | cut -d= -f2)
    bytes=$(stat -c %s "$out" 2>/dev/null || echo 0)
    awk -v name="$name" -v cpu="$cpu" -v start="$start" -v end="$end" -v frames="$frames" -v bytes="$bytes" -v secs="$seconds" \
        'BEGIN { split(cpu, c, " "); wall = end - start; printf "| %s | %.2f | %.1f | %.2f |\n", name, (c[1] + c[2]) / wall, frames / secs, bytes * 8 / secs / 1e6 }'
    rm -f "$out"
}

echo "bench/h264: 1280x720 at 25 frames/s from $display, ${seconds} s per case, $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| Case | CPU (cores) | Frames/s delivered | Bitrate (Mbit/s) |"
echo "|---|---|---|---|"
run_case "capture only (x11grab, raw frames discarded)" -c:v rawvideo -f null
# How many of those frames differ (the page's own paint rate): mpdecimate drops repeats.
run_case "distinct frames only (mpdecimate; the page's paint rate)" -vf mpdecimate -fps_mode vfr -c:v rawvideo -f null
run_case "x264 ultrafast, zerolatency, 4 Mbit/s cap, 1 thread" -c:v libx264 -preset ultrafast -tune zerolatency -b:v 4M -maxrate 4M -bufsize 400k -g 250 -threads 1 -f h264
run_case "x264 veryfast, zerolatency, 4 Mbit/s cap, 1 thread" -c:v libx264 -preset veryfast -tune zerolatency -b:v 4M -maxrate 4M -bufsize 400k -g 250 -threads 1 -f h264
run_case "x264 veryfast, zerolatency, 8 Mbit/s cap, 1 thread" -c:v libx264 -preset veryfast -tune zerolatency -b:v 8M -maxrate 8M -bufsize 800k -g 250 -threads 1 -f h264
run_case "x264 veryfast, zerolatency, CRF 28 (no cap), 1 thread" -c:v libx264 -preset veryfast -tune zerolatency -crf 28 -g 250 -threads 1 -f h264
