-- The shipped pipelines (VG_PIPELINES names this module by default).
--   noop   no steps: claim and complete; for smoke tests and benchmarks
return {
  noop = { steps = {} },
}
