FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY sollol_proxy ./sollol_proxy
RUN pip install --no-cache-dir . && rm -rf /root/.cache

COPY sollol.yaml /etc/sollol/sollol.yaml
# Batch jobs are stored here (batches.sqlite3); mount a volume to keep them across containers.
RUN mkdir -p /var/lib/sollol-proxy && chown nobody /var/lib/sollol-proxy
ENV SOLLOL_DATA_DIR=/var/lib/sollol-proxy
VOLUME /var/lib/sollol-proxy
USER nobody
EXPOSE 11434
# SOLLOL_* environment variables override the file (e.g. SOLLOL_NODES=http://a:11434,http://b:11434).
ENTRYPOINT ["sollol-proxy"]
CMD ["-c", "/etc/sollol/sollol.yaml"]
