# The hedgeguard worker image (also carries starter.py for operators: `docker compose exec worker python starter.py status`).
FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml requirements.lock README.md ./
COPY workflows ./workflows
COPY activities ./activities
COPY models ./models
COPY risk ./risk
COPY sim ./sim
COPY worker.py starter.py ./
RUN pip install --no-cache-dir -c requirements.lock . && useradd --system --uid 10001 hedgeguard \
    && python -m compileall -q workflows activities models risk sim  # the sandbox re-imports workflows/ per run
USER hedgeguard
CMD ["python", "worker.py", "--connect-wait", "180"]
