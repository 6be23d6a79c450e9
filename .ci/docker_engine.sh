# Sourced by .ci/run; defines start_docker_engine. (Placeholder until the docker backend lands.)
AGENTRL_DOCKER_SOCKET=${AGENTRL_DOCKER_SOCKET:-/run/agentrl-docker.sock}
start_docker_engine() { echo "docker engine: not yet wired"; }
