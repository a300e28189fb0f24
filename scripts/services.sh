#!/usr/bin/env bash
# Start the machine's Redis and PostgreSQL on loopback if they are not running (idempotent).
# Tests that need them fail, never skip, when CI=true and they are down.
set -u

redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; }
pg_up() { pg_isready -h 127.0.0.1 -p 5432 -q >/dev/null 2>&1; }

if command -v redis-server >/dev/null 2>&1 && ! redis_up; then
  mkdir -p /var/lib/redis /var/log/redis
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
  for _ in $(seq 50); do redis_up && break; sleep 0.1; done
fi

if command -v pg_ctlcluster >/dev/null 2>&1 && ! pg_up; then
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
  for _ in $(seq 100); do pg_up && break; sleep 0.1; done
fi

redis_up && echo "redis: up" || echo "redis: DOWN"
pg_up && echo "postgresql: up" || echo "postgresql: DOWN"
exit 0
