#!/bin/sh
# Container entry point: first run copies the example config and stops; later runs make sure
# the registration exists and start the bridge.
set -e
cd /data
if [ ! -f config.yaml ]; then
    cp /opt/bridge/config.example.yaml config.yaml
    chmod 600 config.yaml
    echo "Wrote /data/config.yaml from the example. Edit it (homeserver, appservice address,"
    echo "database, companies), then start the container again: it will write"
    echo "/data/registration.yaml for your homeserver."
    exit 0
fi
if [ ! -f registration.yaml ]; then
    python -m bridge -c config.yaml -g -r registration.yaml
    echo "Give /data/registration.yaml to your homeserver, restart it, then start this container again."
    exit 0
fi
exec python -m bridge -c config.yaml "$@"
