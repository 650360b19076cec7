import type { FastifyInstance } from 'fastify';
import type { Tracewire } from '../../Tracewire.js';

/** OTLP/HTTP receiver plugin (being written). */
export async function otlpReceiver(app: FastifyInstance, opts: { tw: Tracewire }): Promise<void> {
  void app;
  void opts;
}
