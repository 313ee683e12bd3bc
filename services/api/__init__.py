"""Generated protobuf and gRPC stubs of protos/meshllm/v1 (python -m services.api.generate_stubs)."""
