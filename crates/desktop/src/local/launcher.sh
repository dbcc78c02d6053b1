# The desktop's supervisor: starts Xvnc, openbox, Chromium and the DevTools relay, and
# exits as soon as any of them exits, writing which one to "$LS_RUN/exit". Under the
# sandbox it is the namespace's first program, so its exit ends every process in it.
#
# Chromium is the exception: when it exits (its last window closed, a crash, killed) it
# is started again on the same profile with its last session restored, and the DevTools
# relay re-pointed at its new port, so a person never faces an empty desktop. Its state
# is in "$LS_RUN/browser": "running N" or "restarting N" (N: starts so far), which the
# server follows. No restart once the server has created "$LS_RUN/stopping" (it closes
# the browser to save it), nor after MAX_RESTARTS within RESTART_WINDOW seconds (a
# browser that cannot stay up ends the desktop, as any other piece does).
#
# Run as `bash -c "$script" livesession-desktop` with a clean environment:
#   LS_RUN       sockets and status files: vnc.sock, devtools.sock, display, exit
#   LS_LOGS      one <piece>.log per piece (stderr)
#   LS_PROFILE   Chromium's user data dir
#   LS_GEOMETRY  e.g. 1280x720
#   LS_XVNC LS_OPENBOX LS_CHROMIUM LS_SOCAT   the binaries
#   LS_CHROMIUM_ARGS   Chromium's arguments, one per line (the start URL last)
#   LS_CHROMIUM_RESTART_ARGS   the same for a restart: no URLs, the last session restored
#   LS_WAIT_NET  if set, Chromium waits for "$LS_RUN/net-ready" (the gateway writes it
#                once the network namespace's routes are in place)
#   LS_HOST_PORTS  loopback ports of the host forwarded into the desktop, space-separated;
#                each is relayed to "$LS_GATE/hostport-<port>.sock", served by the gateway
#   LS_GATE      the gateway's read-only directory of sockets it serves to the desktop
#   LS_LIFELINE_FD  the read end of the server's lifeline (lifeline.rs): at its end of
#                file the server is gone, and the desktop ends within a moment
set -u
declare -A piece=()
MAX_RESTARTS=5
RESTART_WINDOW=60

# The server's read-only configuration (sandbox.rs, CONFIG): mounted at /etc/livesession
# inside the sandbox; without the sandbox, the desktop's etc/ directory beside run/.
if [ "$LS_RUN" = /run/desktop ] && [ -r /etc/livesession/openbox/rc.xml ]; then
    sandboxed=1
    openbox_conf=/etc/livesession
    openbox_rc=/etc/livesession/openbox/rc.xml
else
    sandboxed=
    openbox_conf="$LS_RUN/../etc"
    openbox_rc="$LS_RUN/../etc/openbox-rc.xml"
fi

# Ends the desktop: $1 the piece (or cause), $2 its status, $3 the signal for the
# pieces (TERM by default; a piece that ignores it, as Xvnc can while it starts, is
# killed a second later).
ended() {
    trap - TERM USR1
    printf '%s %s\n' "$1" "$2" > "$LS_RUN/exit.tmp" && mv "$LS_RUN/exit.tmp" "$LS_RUN/exit"
    local signal=${3:-TERM} i
    # The pieces, and every job: a trap can run right after a piece started and before
    # it was written down.
    local all=("${!piece[@]}" $(jobs -p))
    kill "-$signal" "${all[@]}" 2>/dev/null
    if [ "$signal" != KILL ]; then
        for ((i = 0; i < 50; i++)); do
            kill -0 "${all[@]}" 2>/dev/null || break
            sleep 0.02
        done
        kill -KILL "${all[@]}" 2>/dev/null
    fi
    exit 1
}

# Stopped by the server (SIGTERM): take every piece along.
trap 'ended stopped 143' TERM
# The server is gone (the lifeline below): nothing will be saved, end at once.
trap 'ended lifeline 1 KILL' USR1

# The lifeline, before anything else starts: nothing is ever written to it, so the read
# returns only when the server's process has ended (however it ended); then the
# supervisor is told to end, wherever it is waiting.
if [ -n "${LS_LIFELINE_FD:-}" ]; then
    supervisor=$$
    ( read -r -u "$LS_LIFELINE_FD" _; kill -USR1 "$supervisor" ) &
    piece[$!]=lifeline
fi

# The supervisor runs: bubblewrap has set the sandbox up (its loopback among it), so the
# gateway may now give the sandbox its network (slirp4netns): configuring it while
# bubblewrap still set up the loopback failed bubblewrap ("Failed RTM_NEWADDR").
: > "$LS_RUN/supervising"

# Waits until file $1 is non-empty while checking that pid $2 is alive.
wait_for() {
    until [ -s "$1" ]; do
        kill -0 "$2" 2>/dev/null || { wait "$2"; ended "${piece[$2]}" "$?"; }
        sleep 0.02
    done
}

# Xvnc picks a free display itself and writes its number to fd 3 once it accepts clients.
# -rfbport -1: no TCP listener; the Unix socket is the only way in. -extension GLX: nothing
# renders with OpenGL (Chromium runs without a GPU), and loading Mesa cost ~50 MiB.
# -SendPrimary=0: only a copy reaches the viewers' clipboard, not every selection made in
# the remote. -MaxCutText: 256 KiB of clipboard text either way, as the viewer and the
# gateway's input filter allow (crates/relay/src/rfb_filter.rs, MAX_CUT_TEXT).
"$LS_XVNC" -displayfd 3 3>"$LS_RUN/display" \
    -rfbunixpath "$LS_RUN/vnc.sock" -rfbunixmode 0600 -rfbport -1 -SecurityTypes None \
    -geometry "$LS_GEOMETRY" -depth 24 -nolisten tcp -AlwaysShared -desktop livesession -extension GLX \
    -SendPrimary=0 -MaxCutText=262144 \
    2>"$LS_LOGS/xvnc.log" &
piece[$!]=xvnc
xvnc=$!
wait_for "$LS_RUN/display" "$xvnc"
export DISPLAY=":$(head -n1 "$LS_RUN/display")"

# Inside the sandbox: the command line's limiter sets, from outside, how many user
# namespaces may exist below the sandbox's own (sandbox.rs, USER_NAMESPACES_MAX). Nothing
# that could run a page or a program starts before it is in place.
if [ "$sandboxed" ]; then
    for ((i = 0; i < 1000; i++)); do
        read -r userns_max < /proc/sys/user/max_user_namespaces
        [ "$userns_max" != 2147483647 ] && break
        sleep 0.01
    done
    if [ "$userns_max" = 2147483647 ]; then
        echo "livesession: the sandbox's user-namespace limit was not set" >&2
        ended sandbox 1
    fi
fi

# openbox reads only the server's read-only configuration: --config-file, and its XDG
# directories and HOME pointed at the same directory, so nothing in the desktop's home
# (~/.config/openbox/rc.xml or menu.xml, even after a "Reconfigure") is ever read. That
# configuration has no menu, no Execute and no Reconfigure action.
HOME="$openbox_conf" XDG_CONFIG_HOME="$openbox_conf" XDG_CONFIG_DIRS="$openbox_conf" \
    XDG_DATA_HOME="$openbox_conf" XDG_CACHE_HOME="$openbox_conf" \
    "$LS_OPENBOX" --sm-disable --config-file "$openbox_rc" 2>"$LS_LOGS/openbox.log" &
piece[$!]=openbox

if [ -n "${LS_WAIT_NET:-}" ]; then
    until [ -e "$LS_RUN/net-ready" ]; do sleep 0.02; done
fi
# Waits until something listens on port $1 of the desktop's loopback (the kernel's own
# table, so nothing connects to find out), or ends the desktop if process $2 exits first.
wait_listening() {
    local hex address state
    hex=$(printf '%04X' "$1")
    while :; do
        # Lines of "sl local_address rem_address st ...": 0A is LISTEN.
        while read -r _ address _ state _; do
            [ "$address" = "0100007F:$hex" ] && [ "$state" = 0A ] && return 0
        done < /proc/net/tcp
        kill -0 "$2" 2>/dev/null || { echo "livesession: the relay for host port $1 did not start" >&2; ended devtools 1; }
        sleep 0.01
    done
}
browser_state() {
    printf '%s %s\n' "$1" "$2" > "$LS_RUN/browser.tmp" && mv "$LS_RUN/browser.tmp" "$LS_RUN/browser"
}

# Starts Chromium with the arguments given, waits for its DevTools port and relays
# "$LS_RUN/devtools.sock" to it. Returns 1 if Chromium exits first.
start_chromium() {
    rm -f "$LS_PROFILE/DevToolsActivePort"
    "$LS_CHROMIUM" "$@" 2>>"$LS_LOGS/chromium.log" &
    chromium=$!
    piece[$chromium]=chromium
    until [ -s "$LS_PROFILE/DevToolsActivePort" ]; do
        kill -0 "$chromium" 2>/dev/null || return 1
        sleep 0.02
    done
    # DevTools listens on an ephemeral port of the desktop's own loopback; the gateway
    # reaches it through a Unix socket in $LS_RUN.
    devtools_port=$(head -n1 "$LS_PROFILE/DevToolsActivePort")
    # The profile is the desktop's own: take nothing from it but a port number.
    case "$devtools_port" in
        ''|*[!0-9]*) echo "DevToolsActivePort does not start with a port number" >&2; ended devtools 1 ;;
    esac
    "$LS_SOCAT" UNIX-LISTEN:"$LS_RUN/devtools.sock",fork,unlink-early,mode=0600 TCP:127.0.0.1:"$devtools_port" \
        2>>"$LS_LOGS/devtools.log" &
    devtools=$!
    piece[$devtools]=devtools
    starts=$((starts + 1))
    browser_state running "$starts"
}

# A restart is allowed unless the server is stopping the desktop or the browser has
# already been restarted MAX_RESTARTS times within the last RESTART_WINDOW seconds.
declare -a restarted_at=()
may_restart() {
    [ -e "$LS_RUN/stopping" ] && return 1
    local recent=() t
    for t in "${restarted_at[@]}"; do
        ((SECONDS - t < RESTART_WINDOW)) && recent+=("$t")
    done
    restarted_at=("${recent[@]}")
    ((${#restarted_at[@]} < MAX_RESTARTS)) || return 1
    restarted_at+=("$SECONDS")
}

# The host ports listen before Chromium starts: it opens its start page (often on such a
# port) at once, and a connection refused then leaves an error page in the tab.
for port in ${LS_HOST_PORTS:-}; do
    "$LS_SOCAT" TCP-LISTEN:"$port",bind=127.0.0.1,fork,reuseaddr \
        UNIX-CONNECT:"$LS_GATE/hostport-$port.sock" 2>>"$LS_LOGS/devtools.log" &
    piece[$!]=devtools
    wait_listening "$port" "$!"
done

starts=0
mapfile -t chromium_args <<< "$LS_CHROMIUM_ARGS"
mapfile -t chromium_restart_args <<< "$LS_CHROMIUM_RESTART_ARGS"
start_chromium "${chromium_args[@]}" || { wait "$chromium"; ended chromium "$?"; }


while :; do
    wait -n -p dead
    status=$?
    [ -n "${dead:-}" ] || ended unknown "$status"
    name=${piece[$dead]:-unknown}
    unset "piece[$dead]"
    if [ "$name" = chromium ] && may_restart; then
        echo "livesession: Chromium exited (status $status); starting it again" >&2
        browser_state restarting "$starts"
        # The old relay points at a port nobody listens on any more.
        kill "$devtools" 2>/dev/null
        wait "$devtools" 2>/dev/null
        unset "piece[$devtools]"
        until start_chromium "${chromium_restart_args[@]}"; do
            wait "$chromium"
            status=$?
            unset "piece[$chromium]"
            may_restart || ended chromium "$status"
        done
        continue
    fi
    ended "$name" "$status"
done
