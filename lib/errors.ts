/** Every error tunekit throws on purpose. `code` says what kind of fault it is. */
export type ErrorCode =
  | 'E_FILE'
  | 'E_FORMAT'
  | 'E_SHAPE'
  | 'E_RANGE'
  | 'E_NAN'
  | 'E_TYPE'
  | 'E_ARG'
  | 'E_CONFIG'
  | 'E_DEVICE'
  | 'E_DIST'
  | 'E_STATE'
  | 'E_DISPOSED'
  | 'E_MEMORY'
  | 'E_TORCH'
  | 'E_NATIVE';

export class TunekitError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'TunekitError';
    this.code = code;
  }
}

/** Turns an error from the addon (a plain Error with a `code`) into a TunekitError. */
export function fromNative(e: unknown): TunekitError {
  if (e instanceof TunekitError) return e;
  const err = e as { code?: string; message?: string };
  const code = (typeof err?.code === 'string' && err.code.startsWith('E_') ? err.code : 'E_NATIVE') as ErrorCode;
  return new TunekitError(code, err?.message ?? String(e), { cause: e });
}
