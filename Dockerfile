FROM denoland/deno:2.5.6

WORKDIR /app
COPY deno.json deno.lock ./
COPY mod.ts cli.ts ./
COPY lib/ lib/
RUN deno cache cli.ts

USER deno
EXPOSE 8080
ENTRYPOINT ["deno", "run", "--allow-net", "--allow-env=DPRL_*,REDIS_*,LOG_LEVEL", "--ignore-env", "--cached-only", "cli.ts"]
