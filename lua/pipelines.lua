-- The shipped pipelines (VG_PIPELINES names this module by default).
--   noop   no steps: claim and complete; for smoke tests and benchmarks
--   video  the six media steps with review gates (lua/vg/video.lua); step
--          commands default to the offline demo scripts in scripts/steps
return {
  noop = { steps = {} },
  video = require("vg.video").pipeline(),
}
