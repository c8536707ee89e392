export { createServer } from './app';
export type { ServerOptions } from './app';
export { METHOD_TYPES } from './jobs';
