# syntax=docker/dockerfile:1
# The SuperLink of a poisonlab federation: Flower's official image, unchanged but for a folder for its state.
#
# Under `--isolation process` (compose files beside this one) the SuperLink never runs poisonlab's code:
# the ServerApp runs in the poisonlab SuperExec image (superexec.Dockerfile), so this image needs neither
# poisonlab nor torch and keeps Flower's small Alpine variant (Python 3.13; its Python is not poisonlab's).
ARG FLWR_VERSION=1.41.0
FROM flwr/superlink:${FLWR_VERSION}

LABEL org.opencontainers.image.title="poisonlab SuperLink" \
      org.opencontainers.image.description="Flower SuperLink for poisonlab federations" \
      org.opencontainers.image.licenses="Apache-2.0"

# The SuperLink keeps registered SuperNodes and runs in a SQLite file (--database /app/state/state.db).
# Created here as Flower's non-root user (app, uid 49999), so a named volume mounted on it starts with
# that owner and a restarted SuperLink still knows the SuperNodes registered with `flwr supernode register`.
RUN mkdir -p /app/state
VOLUME ["/app/state"]

# The federation's machines talk to each other only: no update check, no usage telemetry to Flower's
# servers (a SuperNode's ClientApp has no route out at all, see compose.supernodes.yaml).
ENV FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0

ENTRYPOINT ["flower-superlink"]
