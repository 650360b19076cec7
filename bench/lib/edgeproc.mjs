// The edge sidecar of bench/broker.mjs, in a process of its own (forked with
// IPC): a tracewire sidecar on the broker that holds the users' connections.
// Sends {port} once subscribed; exits on disconnect.
import { makeTracewire, startSidecar } from './tw.mjs';

const { brokerUrl, prefix, secret } = JSON.parse(process.argv[2]);
const tw = makeTracewire({ jwtSecret: secret, wsHeartbeatMillis: 0, brokerUrl, brokerPrefix: prefix, instanceId: 'edge', logLevel: 'warn' });
const sc = await startSidecar(tw, { host: '127.0.0.1', port: 0 }, undefined);
await tw.fanoutReady;
process.send({ port: Number(new URL(sc.publicUrl).port) });
process.on('disconnect', () => process.exit(0));
