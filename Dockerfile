# dprl in a container. The Deno version is the one .ci/run tests with; a test
# checks that the two agree.
FROM denoland/deno:2.9.6

WORKDIR /app
COPY deno.json deno.lock ./
COPY mod.ts cli.ts ./
COPY lib/ lib/
COPY scripts/healthcheck.ts scripts/

# Everything the program loads, the Redis client included, is fetched now, exactly as
# deno.lock pins it (--frozen fails the build if the lock would change); deno.lock holds
# the program's packages only, the tests' live in tests/deno.lock. The container then runs
# with --cached-only and never downloads code.
USER deno
RUN deno cache --lock=deno.lock --frozen cli.ts

# With DPRL_ADMIN_PORT set, Docker asks the admin server's /healthz; without it there is no
# admin server and the check passes. The check may reach 127.0.0.1 and read that one variable.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
  CMD ["deno", "run", "--cached-only", "--allow-net=127.0.0.1", "--allow-env=DPRL_ADMIN_PORT", "scripts/healthcheck.ts"]

# Deno is PID 1 (the exec form, no shell in between): dprl handles SIGTERM and SIGINT
# itself, stopping gracefully within --shutdown-grace, and starts no child processes,
# so no init is needed to forward signals or reap zombies.
EXPOSE 8080
ENTRYPOINT ["deno", "run", "--cached-only", "--lock=deno.lock", "--frozen", "--allow-net", "--allow-sys=networkInterfaces,hostname", "--allow-read=/etc/dprl,/app/lib", "--allow-env=DPRL_*,REDIS_*,LOG_LEVEL", "--ignore-env", "--v8-flags=--max-semi-space-size=4", "cli.ts"]
