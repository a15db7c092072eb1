#!/bin/sh
# Joins the clips and mixes the narration (loud, starting after a short
# lead-in) over the sound-effects bed (quiet) into final.mp4: H.264 video
# copied from the clips, AAC stereo audio padded or cut to the video length,
# moov atom up front (-movflags +faststart) for streaming.
#
# Reads clips/scene_N.mp4, narration.wav, sfx.wav; writes final.mp4.
# Simulated price: $0.001 per second of rendered video.
set -eu
STEP=video_assembly
case $0 in */*) VG_STEPS_DIR=${0%/*} ;; *) VG_STEPS_DIR=. ;; esac
. "$VG_STEPS_DIR/_lib.sh"

vg_begin
need_tools ffmpeg ffprobe

i=1
while [ "$i" -le "$SCENES" ]; do
    need_file "clips/scene_$i.mp4" video_generation
    i=$((i + 1))
done
need_file narration.wav narration_generation
need_file sfx.wav sound_effects_generation

# The concat demuxer's list; paths are relative to the list file and use
# only safe characters, so the demuxer's default safe mode accepts them.
list=.clips.txt
: >"$list"
i=1
while [ "$i" -le "$SCENES" ]; do
    printf "file 'clips/scene_%s.mp4'\n" "$i" >>"$list"
    i=$((i + 1))
done

tmp=.final.tmp.mp4
audio="\
[1:a]aformat=sample_fmts=fltp:sample_rates=$VG_AUDIO_RATE:channel_layouts=stereo,\
adelay=delays=300:all=1,apad=whole_dur=$TOTAL,atrim=end=${TOTAL}[voice];\
[2:a]aformat=sample_fmts=fltp:sample_rates=$VG_AUDIO_RATE:channel_layouts=stereo,\
volume=0.35,apad=whole_dur=$TOTAL,atrim=end=${TOTAL}[bed];\
[voice][bed]amix=inputs=2:duration=longest:normalize=0,\
alimiter=limit=0.95,asetpts=N/SR/TB[aout]"
ff -f concat -i "$list" -i narration.wav -i sfx.wav \
    -filter_complex "$audio" \
    -map 0:v:0 -map "[aout]" \
    -c:v copy -c:a aac -b:a 128k -ar "$VG_AUDIO_RATE" -ac 2 \
    -t "$TOTAL" -movflags +faststart "$tmp"
[ -s "$tmp" ] || die_temp "ffmpeg produced no output file"

# Check the result before publishing it: one video and one audio stream.
probe=$(ffprobe -v error -show_entries stream=codec_type:format=duration \
    -of default=nw=1 "$tmp") || die_temp "ffprobe cannot read the assembled video"
case "$probe" in
    *codec_type=video*) ;;
    *) die_temp "the assembled video has no video stream" ;;
esac
case "$probe" in
    *codec_type=audio*) ;;
    *) die_temp "the assembled video has no audio stream" ;;
esac
duration=$(printf '%s\n' "$probe" | sed -n 's/^duration=//p')
case "$duration" in
    '' | *[!0-9.]*) die_temp "ffprobe reports no duration for the assembled video" ;;
esac
mv -f "$tmp" final.mp4
rm -f "$list"

size=$(wc -c <final.mp4 | tr -d ' ')
log "final.mp4: ${duration}s, $size bytes"

outputs=$(jq -cn --argjson duration "$duration" --argjson size "$size" \
    --argjson w "$VG_WIDTH" --argjson h "$VG_HEIGHT" --argjson fps "$VG_FPS" \
    --argjson scenes "$SCENES" --arg title "$TITLE" \
    '{path: "final.mp4", duration_seconds: (($duration * 1000 | round) / 1000),
      size_bytes: $size, width: $w, height: $h, fps: $fps, scenes: $scenes,
      video_codec: "h264", audio_codec: "aac", title: $title}')
emit_result "$outputs" "[$(cost_item rendering "$TOTAL" 0.001)]"
