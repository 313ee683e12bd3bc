"""The committed Python stubs are what grpcio-tools makes of protos/ today."""
import subprocess
import sys

from conftest import TESTS


def test_generated_stubs_are_fresh():
    out = subprocess.run([sys.executable, "-m", "services.api.generate_stubs", "--check"], capture_output=True,
                         text=True, cwd=TESTS.parent)
    assert out.returncode == 0, out.stderr


def test_contract_names_clients_rely_on():
    from services.api import common_pb2, generation_pb2, tokenizer_pb2
    generation = generation_pb2.DESCRIPTOR.services_by_name["Generation"]
    assert [m.name for m in generation.methods] == ["Generate", "GenerateStream", "Cancel", "ModelInfo"]
    assert generation.methods_by_name["GenerateStream"].server_streaming
    tokenizer = tokenizer_pb2.DESCRIPTOR.services_by_name["Tokenizer"]
    assert [m.name for m in tokenizer.methods] == ["Tokenize", "Detokenize", "CountTokens", "ApplyChatTemplate",
                                                    "Info"]
    request = generation_pb2.GenerateRequest.DESCRIPTOR
    assert [f.name for f in request.oneofs_by_name["input"].fields] == ["text", "chat", "token_ids"]
    assert {"request_id", "sampling", "stopping", "response"} <= set(request.fields_by_name)
    assert set(generation_pb2.SamplingParams.DESCRIPTOR.fields_by_name) == {
        "temperature", "top_k", "top_p", "min_p", "repetition_penalty", "presence_penalty", "frequency_penalty",
        "seed", "no_repeat_ngram_size"}
    assert set(generation_pb2.StoppingCriteria.DESCRIPTOR.fields_by_name) == {
        "max_new_tokens", "stop_sequences", "stop_token_ids", "ignore_eos", "include_stop_sequence"}
    assert set(common_pb2.Usage.DESCRIPTOR.fields_by_name) == {"prompt_tokens", "completion_tokens",
                                                               "cached_prompt_tokens"}
