#!/bin/sh
# Offline stand-in for the text-to-speech API: speaks the narration with
# espeak-ng into narration.wav (mono 22.05 kHz, peak-normalised). When the
# speech is longer than the video it is re-spoken faster (up to 260 words
# per minute); whatever still overruns is cut by video_assembly.
#
# Writes narration.wav. Simulated price: $0.015 per 100 characters.
set -eu
STEP=narration_generation
case $0 in */*) VG_STEPS_DIR=${0%/*} ;; *) VG_STEPS_DIR=. ;; esac
. "$VG_STEPS_DIR/_lib.sh"

vg_begin
need_tools espeak-ng sox soxi

# A voice variant per channel, so channels sound different.
case $(($(hash_of "${VG_CHANNEL_ID:-}") % 4)) in
    0) VOICE=en-us+m3 ;;
    1) VOICE=en-us+f2 ;;
    2) VOICE=en-us+m1 ;;
    *) VOICE=en-us+f4 ;;
esac

text_file=.narration.txt
raw=.narration.raw.wav
tmp=.narration.tmp.wav
printf '%s\n' "$NARRATION" >"$text_file"
# Number of characters (not bytes) the simulated API would bill.
chars=$(jq -rn --arg t "$NARRATION" '$t | length')

speak() {
    # -f reads the text from a file: no text is ever taken for an option.
    espeak-ng -v "$VOICE" -s "$1" -f "$text_file" -w "$raw" ||
        die_temp "espeak-ng failed (voice $VOICE)"
    [ -s "$raw" ] || die_temp "espeak-ng produced no audio"
    soxi -D "$raw" 2>/dev/null || die_temp "cannot read the duration of $raw"
}

# Leave half a second for the lead-in and the tail.
room=$(calc "$TOTAL - 0.5")
wpm=155
duration=$(speak "$wpm")
if [ "$(calc "$duration > $room")" = "1.000000" ]; then
    wpm=$(awk -v w="$wpm" -v d="$duration" -v r="$room" \
        'BEGIN { n = int(w * d / r) + 1; if (n > 260) n = 260; print n }')
    log "narration is ${duration}s for ${TOTAL}s of video; speaking at $wpm wpm"
    duration=$(speak "$wpm")
fi

run sox "$raw" "$tmp" gain -n -1
mv -f "$tmp" narration.wav
rm -f "$raw" "$text_file"
duration=$(soxi -D narration.wav) || die_temp "cannot read narration.wav"
log "narration ${duration}s, $chars characters, voice $VOICE, $wpm wpm"

outputs=$(jq -cn --arg text "$NARRATION" --arg voice "$VOICE" \
    --argjson duration "$duration" --argjson chars "$chars" \
    --argjson wpm "$wpm" --argjson video "$TOTAL" \
    '{path: "narration.wav", duration_seconds: (($duration * 1000 | round) / 1000),
      characters: $chars, voice: $voice, words_per_minute: $wpm,
      fits_video: ($duration + 0.3 <= $video), text: $text}')
emit_result "$outputs" "[$(cost_item narration "$chars" 0.00015)]"
