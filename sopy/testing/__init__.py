"""Test tooling shipped for demos and benchmarks: the bundled mock provider. Only the CLI's
`mock-upstream` command and the tests use it; the gateway itself never imports it."""
