"""The harness tests and benchmarks share: real service processes on loopback (mesh), concurrent
streaming clients (load), fault scenarios (faults) and protobuf fuzzing (fuzz)."""
