FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY sollol_proxy ./sollol_proxy
RUN pip install --no-cache-dir . && rm -rf /root/.cache

# No nodes in it: they come from SOLLOL_NODES (e.g. http://gpu1:11434,http://gpu2:11434), and
# without them the proxy refuses to start with a message saying so. SOLLOL_* variables override
# the file; mount your own at /etc/sollol/sollol.yaml for more.
COPY deploy/sollol.container.yaml /etc/sollol/sollol.yaml
# Batch jobs are stored here (batches.sqlite3); mount a volume to keep them across containers.
RUN mkdir -p /var/lib/sollol-proxy && chown nobody /var/lib/sollol-proxy
ENV SOLLOL_DATA_DIR=/var/lib/sollol-proxy
VOLUME /var/lib/sollol-proxy
USER nobody
EXPOSE 11434
# Healthy while the proxy answers and at least one node is up (GET /sollol/health: 200, else 503).
# The slim image has no curl: Python's standard library asks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=15s --retries=3 \
  CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/sollol/health' % os.environ.get('SOLLOL_PORT', '11434'), timeout=2)"]
ENTRYPOINT ["sollol-proxy"]
CMD ["-c", "/etc/sollol/sollol.yaml"]
