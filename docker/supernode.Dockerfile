# syntax=docker/dockerfile:1
# A SuperNode of a poisonlab federation: Flower's official image.
#
# Under `--isolation process` (compose files beside this one) the SuperNode only relays messages: its
# ClientApp runs in its own poisonlab SuperExec container (superexec.Dockerfile), so this image needs
# neither poisonlab nor torch and keeps Flower's small Alpine variant (Python 3.13). Its partition and role
# come from `--node-config` in the compose file, its key and certificates from read-only mounts.
ARG FLWR_VERSION=1.41.0
FROM flwr/supernode:${FLWR_VERSION}

LABEL org.opencontainers.image.title="poisonlab SuperNode" \
      org.opencontainers.image.description="Flower SuperNode for poisonlab federations" \
      org.opencontainers.image.licenses="Apache-2.0"

# The federation's machines talk to each other only: no update check, no usage telemetry to Flower's
# servers (a SuperNode's ClientApp has no route out at all, see compose.supernodes.yaml).
ENV FLWR_DISABLE_UPDATE_CHECK=1 \
    FLWR_TELEMETRY_ENABLED=0

ENTRYPOINT ["flower-supernode"]
