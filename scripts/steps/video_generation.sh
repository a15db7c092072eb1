#!/bin/sh
# Offline stand-in for the image-to-video API: turns each composite into a
# clip of seconds_per_scene with a slow "Ken Burns" move (zoom in, pan,
# zoom out, pan back), 25 fps, H.264 yuv420p, no audio. All clips share the
# same encoder settings so video_assembly can join them without re-encoding.
#
# Reads composites/scene_N.png; writes clips/scene_N.mp4.
# Simulated price: $0.10 per second of video.
set -eu
STEP=video_generation
case $0 in */*) VG_STEPS_DIR=${0%/*} ;; *) VG_STEPS_DIR=. ;; esac
. "$VG_STEPS_DIR/_lib.sh"

vg_begin
need_tools ffmpeg

i=1
while [ "$i" -le "$SCENES" ]; do
    need_file "composites/scene_$i.png" composite_creation
    i=$((i + 1))
done

mkdir -p clips || die_temp "cannot create the clips folder"

frames=$((SPS * VG_FPS))
last=$((frames - 1))
# zoompan works on whole pixels; working on a 3x upscale keeps the motion
# smooth at the output size.
up_w=$((VG_WIDTH * 3))
up_h=$((VG_HEIGHT * 3))

# One ffmpeg run renders every clip (one chain and one output per scene).
graph=''
clips=''
i=1
while [ "$i" -le "$SCENES" ]; do
    case $(((i - 1) % 4)) in
        0) motion="zoom in"
            z="1+0.08*on/$last"
            x="(iw-iw/zoom)/2"
            y="(ih-ih/zoom)/2" ;;
        1) motion="pan right"
            z="1.06"
            x="(iw-iw/zoom)*on/$last"
            y="(ih-ih/zoom)/2" ;;
        2) motion="zoom out"
            z="1.08-0.08*on/$last"
            x="(iw-iw/zoom)/2"
            y="(ih-ih/zoom)/2" ;;
        *) motion="pan left"
            z="1.06"
            x="(iw-iw/zoom)*(1-on/$last)"
            y="(ih-ih/zoom)/2" ;;
    esac
    log "scene $i: $motion, ${SPS}s"
    graph="$graph${graph:+;}[$((i - 1)):v]scale=$up_w:$up_h:flags=bicubic,\
zoompan=z='$z':x='$x':y='$y':d=$frames:s=${VG_WIDTH}x$VG_HEIGHT:fps=$VG_FPS,\
setsar=1,format=yuv420p[v$i]"
    clips="$clips clips/scene_$i.mp4"
    i=$((i + 1))
done

# ffmpeg arguments: the inputs, the graph, then one output per scene, all
# with the same encoder settings.
set --
i=1
while [ "$i" -le "$SCENES" ]; do
    set -- "$@" -i "composites/scene_$i.png"
    i=$((i + 1))
done
set -- "$@" -filter_complex "$graph"
i=1
while [ "$i" -le "$SCENES" ]; do
    set -- "$@" -map "[v$i]" -frames:v "$frames" -r "$VG_FPS" -an \
        -c:v libx264 -preset veryfast -crf 23 -pix_fmt yuv420p \
        -g "$VG_FPS" -video_track_timescale 12800 \
        -movflags +faststart "clips/.scene_$i.tmp.mp4"
    i=$((i + 1))
done
ff "$@"

i=1
while [ "$i" -le "$SCENES" ]; do
    tmp="clips/.scene_$i.tmp.mp4"
    [ -s "$tmp" ] || die_temp "ffmpeg produced no clip for scene $i"
    mv -f "$tmp" "clips/scene_$i.mp4"
    i=$((i + 1))
done

# shellcheck disable=SC2086 # word splitting of the path list is intended
outputs=$(jq -cn --argjson scenes "$SCENES" --argjson sps "$SPS" \
    --argjson total "$TOTAL" --argjson fps "$VG_FPS" \
    '{clips: $ARGS.positional, scenes: $scenes, seconds_per_scene: $sps,
      total_seconds: $total, fps: $fps}' \
    --args $clips)
emit_result "$outputs" "[$(cost_item video_generation "$TOTAL" 0.10)]"
