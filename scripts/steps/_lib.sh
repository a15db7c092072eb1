# Shared helpers for the offline demo step commands in scripts/steps/.
#
# Sourced (never executed) by each step script after it has set STEP:
#
#     STEP=asset_generation
#     case $0 in */*) VG_STEPS_DIR=${0%/*} ;; *) VG_STEPS_DIR=. ;; esac
#     . "$VG_STEPS_DIR/_lib.sh"
#
# Contract (see scripts/README.md): the current directory is the task's
# workspace; input comes from VG_* environment variables; the last line of
# stdout is one JSON object {"outputs": {...}, "costs": [...]}; diagnostics
# go to stderr; exit 0 ok, 65 bad input (not retriable), 75 transient
# (retriable).

EX_DATAERR=65
EX_TEMPFAIL=75

# Media constants shared by every step so the pieces fit together (used by
# the sourcing scripts).
# shellcheck disable=SC2034
{
    VG_WIDTH=640
    VG_HEIGHT=360
    VG_FPS=25
    VG_AUDIO_RATE=44100
    VG_FONT_DIR=/usr/share/fonts/truetype/dejavu
}

log() {
    printf '%s: %s\n' "$STEP" "$*" >&2
}

die_data() {
    log "error: $*"
    exit "$EX_DATAERR"
}

die_temp() {
    log "error: $*"
    exit "$EX_TEMPFAIL"
}

# Debian package that provides a tool, for error messages.
pkg_for() {
    case "$1" in
        ffmpeg | ffprobe) echo ffmpeg ;;
        sox | soxi) echo sox ;;
        *) echo "$1" ;;
    esac
}

# need_tools TOOL...: fail (retriable: another worker or a later attempt may
# have it) when a required program is not on PATH.
need_tools() {
    for _t in "$@"; do
        command -v "$_t" >/dev/null 2>&1 ||
            die_temp "required tool '$_t' not found on PATH (install the Debian package '$(pkg_for "$_t")')"
    done
}

# need_file PATH PRODUCER: a non-empty input written by an earlier step.
need_file() {
    [ -s "$1" ] ||
        die_data "missing input file '$1' (written by the $2 step; run it first)"
}

# run CMD...: run a media tool; a failure is reported as transient.
run() {
    "$@" || {
        _rc=$?
        die_temp "'$1' failed with exit status $_rc"
    }
}

# ffmpeg with the options every step wants: no stdin, quiet, overwrite.
ff() {
    run ffmpeg -nostdin -hide_banner -loglevel error -y "$@"
}

# A stable 32-bit number derived from a string (POSIX cksum).
hash_of() {
    printf '%s' "$1" | cksum | cut -d ' ' -f 1
}

# Floating-point helpers through awk (POSIX).
# calc EXPR: prints EXPR with 6 decimals (comparisons give 1.000000 or 0.000000).
calc() {
    awk "BEGIN { printf \"%.6f\", ($1) }"
}

# emit_result OUTPUTS_JSON COSTS_JSON: the final stdout line.
emit_result() {
    jq -cn --argjson outputs "$1" --argjson costs "$2" \
        '{outputs: $outputs, costs: $costs}' ||
        die_temp "could not build the result JSON"
}

# cost_item COMPONENT QUANTITY UNIT_PRICE: one cost entry, rounded to 1/100
# of a cent.
cost_item() {
    jq -cn --arg c "$1" --argjson q "$2" --argjson p "$3" \
        '{component: $c, cost_usd: (($q * $p * 10000 | round) / 10000)}'
}

# --- test hooks --------------------------------------------------------------

vg_test_hooks() {
    if [ -n "${VG_FAKE_SLEEP:-}" ]; then
        if [ -z "${VG_FAKE_SLEEP_STEP:-}" ] || [ "$VG_FAKE_SLEEP_STEP" = "$STEP" ]; then
            case "$VG_FAKE_SLEEP" in
                *[!0-9.]* | . | *.*.*) die_data "VG_FAKE_SLEEP must be a number of seconds" ;;
            esac
            log "test hook: sleeping ${VG_FAKE_SLEEP}s (VG_FAKE_SLEEP)"
            sleep "$VG_FAKE_SLEEP"
        fi
    fi
    if [ -n "${VG_FAKE_FAIL:-}" ]; then
        case "$VG_FAKE_FAIL" in
            "$STEP")
                log "test hook: failing on purpose (VG_FAKE_FAIL=$VG_FAKE_FAIL), exit $EX_TEMPFAIL"
                exit "$EX_TEMPFAIL"
                ;;
            "$STEP":*)
                _code=${VG_FAKE_FAIL#"$STEP":}
                case "$_code" in
                    '' | *[!0-9]*) die_data "VG_FAKE_FAIL code must be a number: $VG_FAKE_FAIL" ;;
                esac
                if [ "$_code" -lt 1 ] || [ "$_code" -gt 255 ]; then
                    die_data "VG_FAKE_FAIL code must be 1..255: $VG_FAKE_FAIL"
                fi
                log "test hook: failing on purpose (VG_FAKE_FAIL=$VG_FAKE_FAIL), exit $_code"
                exit "$_code"
                ;;
        esac
    fi
    if [ -n "${VG_FAKE_FAIL_ONCE:-}" ] && [ "$VG_FAKE_FAIL_ONCE" = "$STEP" ]; then
        _marker=".vg_fake_fail_once.$STEP"
        if [ ! -e "$_marker" ]; then
            : >"$_marker" || die_temp "cannot write $_marker"
            log "test hook: failing once on purpose (VG_FAKE_FAIL_ONCE=$STEP), exit $EX_TEMPFAIL"
            exit "$EX_TEMPFAIL"
        fi
        log "test hook: VG_FAKE_FAIL_ONCE=$STEP already failed once here, running normally"
    fi
}

# --- payload -----------------------------------------------------------------

# Parses the payload, from the file VG_PAYLOAD_FILE names (any size), else
# VG_PAYLOAD (unset or empty means {}), and sets:
#   TITLE      title, one line, at most 80 characters, default "Untitled"
#   TOPIC      topic, one line, may be empty
#   NARRATION  narration text (payload's, or derived from title and topic)
#   TITLE_WRAPPED  the title word-wrapped for drawing (at most 3 lines)
#   SCENES     1..8 (default 3)
#   SPS        seconds per scene, 1..10 (default 2)
#   TOTAL      SCENES * SPS
# Exits 65 when the payload is not one JSON object or a field has the
# wrong type.
vg_parse_payload() {
    if [ -n "${VG_PAYLOAD_FILE:-}" ]; then
        [ -r "$VG_PAYLOAD_FILE" ] || die_data "VG_PAYLOAD_FILE names $VG_PAYLOAD_FILE, which cannot be read"
        _payload_cmd="cat"
    else
        _payload=${VG_PAYLOAD:-}
        [ -n "$_payload" ] || _payload='{}'
        _payload_cmd="printf %s"
    fi
    vg_payload_text() {
        if [ "$_payload_cmd" = cat ]; then cat "$VG_PAYLOAD_FILE"; else printf '%s' "$_payload"; fi
    }
    _vars=$(vg_payload_text | jq -rs '
        def fail(m): error("invalid payload: " + m);
        def int_field(v; d; lo; hi; name):
            (if v == null then d
             elif (v | type) == "number" then v
             elif (v | type) == "string" then
                 (v | tonumber? // fail(name + " must be a number"))
             else fail(name + " must be a number") end)
            | floor
            | if . < lo then lo elif . > hi then hi else . end;
        def text_field(v; name; max):
            (if v == null then ""
             elif (v | type) == "string" then v
             elif (v | type) == "number" then (v | tostring)
             else fail(name + " must be a string") end)
            | gsub("[[:cntrl:][:space:]]+"; " ")
            | ltrimstr(" ") | rtrimstr(" ")
            | if length > max then .[0:max - 1] + "\u2026" else . end;
        def sentence:
            if . == "" then ""
            else (.[0:1] | ascii_upcase) + .[1:]
                 + (if test("[.!?\u2026]$") then "" else "." end)
            end;
        # Greedy word wrap by characters; words longer than w are split.
        def wrap(w):
            [ split(" ")[] | select(length > 0)
              | . as $word | [range(0; length; w) | $word[.:. + w]][] ]
            | reduce .[] as $word ([];
                if length == 0 then [$word]
                elif (.[length - 1] | length) + 1 + ($word | length) <= w
                then .[length - 1] += " " + $word
                else . + [$word] end);
        if length != 1 then fail("expected exactly one JSON value") else .[0] end
        | if type != "object" then fail("must be a JSON object") else . end
        | (text_field(.title; "title"; 80)
           | if . == "" then "Untitled" else . end) as $title
        | text_field(.topic; "topic"; 200) as $topic
        | (text_field(.narration; "narration"; 1000)
           | if . == "" then
                 ([$title | sentence, ($topic | sentence)]
                  | map(select(. != "")) | join(" "))
             else . end) as $narration
        | int_field(.scenes; 3; 1; 8; "scenes") as $scenes
        | int_field(.seconds_per_scene; 2; 1; 10; "seconds_per_scene") as $sps
        | ($title | wrap(26)) as $lines
        | (if ($lines | length) > 3
           then $lines[0:2] + [($lines[2] | .[0:25]) + "\u2026"]
           else $lines end | join("\n")) as $wrapped
        | "TITLE=\($title | @sh)",
          "TOPIC=\($topic | @sh)",
          "NARRATION=\($narration | @sh)",
          "TITLE_WRAPPED=\($wrapped | @sh)",
          "SCENES=\($scenes)",
          "SPS=\($sps)",
          "TOTAL=\($scenes * $sps)"
    ') || die_data "the payload is not valid (see the message above); expected a JSON object such as {\"title\":\"...\",\"scenes\":3}"
    eval "$_vars"
}

# --- start-up common to every step ------------------------------------------

vg_begin() {
    if [ -n "${VG_STEP:-}" ] && [ "$VG_STEP" != "$STEP" ]; then
        log "warning: VG_STEP is '$VG_STEP' but this command implements '$STEP'"
    fi
    # The demo steps call no paid API, so they never need the channel's
    # credentials: note whether they were supplied and keep them away from
    # every child process. Never print them.
    # shellcheck disable=SC2034 # used in the asset_generation outputs
    if [ -n "${VG_CHANNEL_CREDENTIALS:-}" ]; then
        VG_HAS_CREDENTIALS=true
    else
        VG_HAS_CREDENTIALS=false
    fi
    unset VG_CHANNEL_CREDENTIALS
    [ -w . ] || die_temp "the workspace '$(pwd)' is not writable"
    vg_test_hooks
    need_tools jq
    vg_parse_payload
    log "task=${VG_TASK_ID:-?} channel=${VG_CHANNEL_ID:-?} scenes=$SCENES seconds_per_scene=$SPS"
}
