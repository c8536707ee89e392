/** Optimizers over a model's trainable parameters, and learning-rate schedules. The update runs in the native core. */
import fs from 'node:fs';
import { TunekitError } from './errors';
import type { Model } from './model';
import { Handle, RawOptimizerSpec, addon, serial, sync } from './native';
import { atomicWrite, entry, readHeader } from './safetensors';
import { checkBoolean, checkChoice, checkNumber, checkOptions, show } from './validate';

export type ScheduleType = 'constant' | 'linear' | 'cosine';

export interface Schedule {
  type: ScheduleType;
  warmupSteps?: number;
  /** Needed by 'linear' and 'cosine': the step at which the rate reaches zero. */
  totalSteps?: number;
}

/** The multiplier on the base rate before optimizer step `step` (0-based), as transformers' get_*_schedule_with_warmup. */
export function scheduleFactor(s: Schedule, step: number): number {
  const warmup = s.warmupSteps ?? 0;
  if (step < warmup) return step / Math.max(1, warmup);
  if (s.type === 'constant') return 1;
  if (s.totalSteps === undefined) throw new TunekitError('E_ARG', `a '${s.type}' schedule needs totalSteps`);
  const total = s.totalSteps;
  if (s.type === 'linear') return Math.max(0, (total - step) / Math.max(1, total - warmup));
  const progress = (step - warmup) / Math.max(1, total - warmup);
  return Math.max(0, 0.5 * (1 + Math.cos(Math.PI * 2 * 0.5 * progress)));
}

export interface OptimizerOptions {
  lr?: number;
  weightDecay?: number;
  schedule?: Schedule;
  /** Clip the global gradient norm to this before each step (0 = no clipping). */
  maxGradNorm?: number;
  /**
   * Which trainable parameters skip weight decay. Default: every parameter with fewer than 2 dimensions
   * (biases and norm weights), as transformers' Trainer and nanoGPT do.
   */
  noDecay?: (name: string, shape: number[]) => boolean;
}

export interface StepResult {
  gradNorm: number;
  lr: number;
  step: number;
  /** With a GradScaler: the gradients overflowed, so no update was applied and the scale was lowered. */
  skipped?: boolean;
}

export interface GradScalerOptions {
  initScale?: number;
  growthFactor?: number;
  backoffFactor?: number;
  growthInterval?: number;
}

/**
 * Dynamic loss scaling for float16 training, with torch.amp.GradScaler's semantics: the loss is multiplied by `scale`
 * before backward, so that small float16 gradients do not flush to zero; the optimizer divides the gradients by it,
 * and skips the update when any is infinite or NaN. Each skip multiplies the scale by backoffFactor; growthInterval
 * updates in a row without one multiply it by growthFactor. Scaling by a power of two is exact, so the updates that
 * are applied equal unscaled training's.
 */
export class GradScaler {
  scale: number;
  readonly growthFactor: number;
  readonly backoffFactor: number;
  readonly growthInterval: number;
  /** Updates applied since the last skip or growth. */
  growthTracker = 0;

  constructor(options: GradScalerOptions = {}) {
    checkOptions(options, ['initScale', 'growthFactor', 'backoffFactor', 'growthInterval'], 'GradScaler');
    this.scale = checkNumber(options.initScale, 'initScale', { min: 0, minExclusive: true }, 2 ** 16);
    this.growthFactor = checkNumber(options.growthFactor, 'growthFactor', { min: 1, minExclusive: true }, 2);
    this.backoffFactor = checkNumber(
      options.backoffFactor,
      'backoffFactor',
      { min: 0, minExclusive: true, max: 1, maxExclusive: true },
      0.5,
    );
    this.growthInterval = checkNumber(options.growthInterval, 'growthInterval', { integer: true, min: 1 }, 2000);
  }

  /** After each step: lower the scale on an overflow, raise it after growthInterval clean steps. */
  update(foundInf: boolean): void {
    if (foundInf) {
      this.scale *= this.backoffFactor;
      this.growthTracker = 0;
    } else if (++this.growthTracker === this.growthInterval) {
      this.scale *= this.growthFactor;
      this.growthTracker = 0;
    }
  }

  state(): { scale: number; growthTracker: number } {
    return { scale: this.scale, growthTracker: this.growthTracker };
  }

  load(state: { scale: number; growthTracker: number }): void {
    this.scale = checkNumber(state?.scale, 'GradScaler state scale', { min: 0, minExclusive: true, code: 'E_FORMAT' });
    this.growthTracker = checkNumber(state.growthTracker, 'GradScaler state growthTracker', { integer: true, min: 0, code: 'E_FORMAT' });
  }
}

abstract class Optimizer {
  readonly model: Model;
  lr: number;
  weightDecay: number;
  schedule: Schedule;
  maxGradNorm: number;
  private handle: Handle | null = null;
  private steps = 0;
  private pendingState: { file: string; step: number } | null = null;
  private disposed = false;
  protected readonly noDecay: (name: string, shape: number[]) => boolean;

  constructor(model: Model, options: OptimizerOptions, defaults: { lr: number; weightDecay: number }) {
    this.model = model;
    this.lr = checkNumber(options.lr, 'lr', { min: 0 }, defaults.lr);
    this.weightDecay = checkNumber(options.weightDecay, 'weightDecay', { min: 0 }, defaults.weightDecay);
    this.schedule = checkSchedule(options.schedule);
    this.maxGradNorm = checkNumber(options.maxGradNorm, 'maxGradNorm', { min: 0 }, 0);
    if (options.noDecay !== undefined && typeof options.noDecay !== 'function')
      throw new TunekitError('E_ARG', `noDecay must be a function (name, shape) => boolean, got ${show(options.noDecay)}`);
    this.noDecay = options.noDecay ?? ((_, shape) => shape.length < 2);
    model.attach(this);
  }

  protected abstract spec(noDecay: string[]): RawOptimizerSpec;

  /**
   * Created at the first step, so it covers the parameters trainable by then (after a strategy froze the rest).
   * Called only from inside a `serial` job, so it uses the addon directly.
   */
  private async native(): Promise<Handle> {
    if (this.disposed) throw new TunekitError('E_DISPOSED', 'this optimizer was disposed');
    if (!this.handle) {
      const names = this.model
        .parameters()
        .filter((p) => p.trainable && this.noDecay(p.name, p.shape))
        .map((p) => p.name);
      const h = await addon.createOptimizer(this.model.nativeHandle, this.spec(names));
      if (this.pendingState) {
        const { file, step } = this.pendingState;
        const entries = [...readHeader(file).tensors].map(([n, t]) => entry(n, t));
        await addon.optimizerLoad(h, file, entries, step);
        this.pendingState = null;
      }
      this.handle = h;
    }
    return this.handle;
  }

  get stepCount(): number {
    return this.steps;
  }
  currentLr(): number {
    return this.lr * scheduleFactor(this.schedule, this.steps);
  }

  /**
   * Clips, applies one update and advances the schedule. A non-finite gradient is refused (E_NAN), weights untouched.
   * With a `scaler` (the gradients come from a loss multiplied by scaler.scale) the gradients are unscaled first, and
   * an overflow skips the update instead (`skipped`, the schedule stays) and lowers the scale.
   */
  step(options: { scaler?: GradScaler } = {}): Promise<StepResult> {
    checkOptions(options, ['scaler'], 'step');
    const scaler = options.scaler;
    if (scaler !== undefined && !(scaler instanceof GradScaler)) throw new TunekitError('E_ARG', 'scaler must be a GradScaler');
    // One queued job, so steps a caller did not await still run in call order between their backward calls.
    return serial(async () => {
      const h = await this.native();
      const lr = this.currentLr();
      const gradNorm = await addon.optimizerStep(h, lr, this.maxGradNorm, scaler?.scale ?? 1, scaler !== undefined);
      const skipped = !Number.isFinite(gradNorm);
      scaler?.update(skipped);
      if (skipped) return { gradNorm, lr, step: this.steps, skipped };
      this.steps++;
      return { gradNorm, lr, step: this.steps, ...(scaler ? { skipped } : {}) };
    });
  }

  async zeroGrad(): Promise<void> {
    await this.model.zeroGrad();
  }

  /** Frees the moment buffers now (the model's dispose does it too); a later step is E_DISPOSED. */
  dispose(): void {
    if (this.handle) sync(() => addon.dispose(this.handle!));
    this.handle = null;
    this.disposed = true;
  }

  /** Writes the optimizer's moment buffers as safetensors (atomically); the step count goes in the caller's state. */
  async save(file: string): Promise<void> {
    await atomicWrite(file, (tmp) => serial(async () => addon.optimizerSave(await this.native(), tmp)));
  }

  /** Restores state written by save(); `step` is the number of steps taken when it was saved. */
  async load(file: string, step: number): Promise<void> {
    if (!fs.existsSync(file)) throw new TunekitError('E_FILE', `${file} does not exist`);
    readHeader(file);
    await serial(async () => {
      this.pendingState = { file, step };
      if (this.handle) addon.dispose(this.handle);
      this.handle = null;
      await this.native();
      this.steps = step;
    });
  }
}

const OPTIMIZER_OPTIONS = ['lr', 'weightDecay', 'schedule', 'maxGradNorm', 'noDecay'];

function checkSchedule(s: Schedule | undefined): Schedule {
  if (s === undefined) return { type: 'constant' };
  checkOptions(s, ['type', 'warmupSteps', 'totalSteps'], 'schedule');
  const type = checkChoice<ScheduleType>(s.type, ['constant', 'linear', 'cosine'], 'schedule.type');
  const out: Schedule = { type };
  if (s.warmupSteps !== undefined) out.warmupSteps = checkNumber(s.warmupSteps, 'schedule.warmupSteps', { integer: true, min: 0 });
  if (s.totalSteps !== undefined) out.totalSteps = checkNumber(s.totalSteps, 'schedule.totalSteps', { integer: true, min: 1 });
  return out;
}

export interface AdamWOptions extends OptimizerOptions {
  betas?: [number, number];
  eps?: number;
}

/** AdamW with decoupled weight decay, step for step as torch.optim.AdamW. */
export class AdamW extends Optimizer {
  readonly betas: [number, number];
  readonly eps: number;
  constructor(model: Model, options: AdamWOptions = {}) {
    checkOptions(options, [...OPTIMIZER_OPTIONS, 'betas', 'eps'], 'AdamW');
    super(model, options, { lr: 1e-3, weightDecay: 0.01 });
    const betas = options.betas ?? [0.9, 0.999];
    if (!Array.isArray(betas) || betas.length !== 2) throw new TunekitError('E_ARG', `betas must be [beta1, beta2], got ${show(betas)}`);
    this.betas = [
      checkNumber(betas[0], 'betas[0]', { min: 0, max: 1, maxExclusive: true }),
      checkNumber(betas[1], 'betas[1]', { min: 0, max: 1, maxExclusive: true }),
    ];
    this.eps = checkNumber(options.eps, 'eps', { min: 0, minExclusive: true }, 1e-8);
  }
  protected spec(noDecay: string[]): RawOptimizerSpec {
    return {
      kind: 'adamw',
      beta1: this.betas[0],
      beta2: this.betas[1],
      eps: this.eps,
      weightDecay: this.weightDecay,
      momentum: 0,
      dampening: 0,
      nesterov: false,
      noDecay,
    };
  }
}

export interface SGDOptions extends OptimizerOptions {
  momentum?: number;
  dampening?: number;
  nesterov?: boolean;
}

/** SGD with momentum and L2 weight decay, as torch.optim.SGD. */
export class SGD extends Optimizer {
  readonly momentum: number;
  readonly dampening: number;
  readonly nesterov: boolean;
  constructor(model: Model, options: SGDOptions = {}) {
    checkOptions(options, [...OPTIMIZER_OPTIONS, 'momentum', 'dampening', 'nesterov'], 'SGD');
    super(model, options, { lr: 1e-2, weightDecay: 0 });
    this.momentum = checkNumber(options.momentum, 'momentum', { min: 0 }, 0);
    this.dampening = checkNumber(options.dampening, 'dampening', { min: 0, max: 1 }, 0);
    this.nesterov = checkBoolean(options.nesterov, 'nesterov', false);
    // torch.optim.SGD's own rule: Nesterov needs momentum and no dampening.
    if (this.nesterov && (this.momentum <= 0 || this.dampening !== 0))
      throw new TunekitError('E_ARG', 'nesterov needs momentum > 0 and dampening 0');
  }
  protected spec(noDecay: string[]): RawOptimizerSpec {
    return {
      kind: 'sgd',
      beta1: 0,
      beta2: 0,
      eps: 0,
      weightDecay: this.weightDecay,
      momentum: this.momentum,
      dampening: this.dampening,
      nesterov: this.nesterov,
      noDecay,
    };
  }
}

export type { Optimizer };
