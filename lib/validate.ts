/**
 * Argument checks shared by the whole public API: unknown option names, and numbers that must be finite, integral or
 * in a range. Every failure is a TunekitError naming the option, so a typo or a NaN never silently changes a run.
 */
import { ErrorCode, TunekitError } from './errors';

/** A value as a message shows it: JSON where JSON can say it (BigInt, symbols and functions cannot). */
export function show(v: unknown): string {
  if (typeof v === 'bigint') return `${v}n`;
  if (typeof v === 'number' || typeof v === 'undefined' || typeof v === 'symbol' || typeof v === 'function') return String(v);
  try {
    const s = JSON.stringify(v);
    return s === undefined ? String(v) : s.length > 60 ? `${s.slice(0, 57)}...` : s;
  } catch {
    return Object.prototype.toString.call(v);
  }
}

/** `options` is undefined or a plain object whose keys are all in `known`; returns it (or {}). */
export function checkOptions<T extends object>(options: T | undefined, known: readonly string[], what: string): T {
  if (options === undefined) return {} as T;
  if (options === null || typeof options !== 'object' || Array.isArray(options))
    throw new TunekitError('E_ARG', `${what} options must be an object, got ${show(options)}`);
  for (const k of Object.keys(options)) {
    if (!known.includes(k)) throw new TunekitError('E_ARG', `${what}: unknown option '${k}' (known: ${known.join(', ')})`);
  }
  return options;
}

export interface NumberRule {
  integer?: boolean;
  /** Inclusive bounds unless the matching `*Exclusive` is set. */
  min?: number;
  max?: number;
  minExclusive?: boolean;
  maxExclusive?: boolean;
  code?: ErrorCode;
}

/** A finite number obeying `rule`; `fallback` stands in for undefined. */
export function checkNumber(value: unknown, what: string, rule: NumberRule = {}, fallback?: number): number {
  const v = value === undefined ? fallback : value;
  const code = rule.code ?? 'E_ARG';
  const range = () => {
    const lo = rule.min === undefined ? '' : `${rule.minExclusive ? '>' : '>='} ${rule.min}`;
    const hi = rule.max === undefined ? '' : `${rule.maxExclusive ? '<' : '<='} ${rule.max}`;
    return [lo, hi].filter(Boolean).join(' and ');
  };
  if (typeof v !== 'number' || !Number.isFinite(v) || (rule.integer && !Number.isInteger(v)))
    throw new TunekitError(
      code,
      `${what} must be ${rule.integer ? 'an integer' : 'a finite number'}${range() ? ` ${range()}` : ''}, got ${show(v)}`,
    );
  const low = rule.min !== undefined && (rule.minExclusive ? v <= rule.min : v < rule.min);
  const high = rule.max !== undefined && (rule.maxExclusive ? v >= rule.max : v > rule.max);
  if (low || high) throw new TunekitError(code, `${what} must be ${range()}, got ${v}`);
  return v;
}

export function checkBoolean(value: unknown, what: string, fallback: boolean): boolean {
  const v = value === undefined ? fallback : value;
  if (typeof v !== 'boolean') throw new TunekitError('E_ARG', `${what} must be true or false, got ${show(v)}`);
  return v;
}

/** One of `allowed`, or `fallback` for undefined. */
export function checkChoice<T extends string>(value: unknown, allowed: readonly T[], what: string, fallback?: T): T {
  const v = value === undefined ? fallback : value;
  if (!allowed.includes(v as T))
    throw new TunekitError('E_ARG', `${what} must be one of ${allowed.map((a) => `'${a}'`).join(', ')}, got ${show(v)}`);
  return v as T;
}
