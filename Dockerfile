# tracewire sidecar image (used by docker-compose.yml).
FROM node:20-slim AS build
WORKDIR /app
COPY package.json package-lock.json ./
RUN npm ci --no-audit --no-fund
COPY tsconfig.json tsconfig.build.json ./
COPY src ./src
RUN npm run build && npm prune --omit=dev

FROM node:20-slim
ENV NODE_ENV=production
WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY bin ./bin
USER node
# 8080: public listener (WebSocket, /metrics, runs API, inspector); 4318: OTLP/HTTP receiver.
EXPOSE 8080 4318
ENTRYPOINT ["node", "bin/tracewire.js", "serve"]
CMD ["--listen", "0.0.0.0:8080", "--otlp-listen", "0.0.0.0:4318"]
