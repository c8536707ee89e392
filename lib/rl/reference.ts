/**
 * The reference a preference or RLHF method keeps the policy close to: a model the caller gives; else the policy with
 * its adapters switched off when it runs a PEFT adapter (no second copy of the weights, as TRL does with PEFT); else
 * a frozen copy of the policy as it was when the reference was made. Log-probabilities are taken with dropout off.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import type { BatchInput } from '../batch';
import { TunekitError } from '../errors';
import { Model } from '../model';
import type { FloatArray } from '../native';

export class Reference {
  private constructor(
    private readonly policy: Model,
    private readonly given: Model | undefined,
    private copy: Model | undefined,
  ) {}

  /** Checks a given reference against the policy, or prepares the default (the frozen copy, when one is needed). */
  static async of(policy: Model, given: Model | undefined): Promise<Reference> {
    if (given !== undefined) {
      if (!(given instanceof Model) || given.task !== 'causal-lm' || given.vocabSize !== policy.vocabSize)
        throw new TunekitError('E_ARG', `reference must be a causal-lm Model with the policy's vocabulary (${policy.vocabSize} tokens)`);
      if (given === policy) throw new TunekitError('E_ARG', 'reference must not be the policy itself (leave it out for the default)');
      return new Reference(policy, given, undefined);
    }
    return new Reference(policy, undefined, policy.activeAdapter === null ? await frozenCopyOf(policy) : undefined);
  }

  /** Whether the reference is a second copy of the weights that this object owns. */
  get ownsCopy(): boolean {
    return this.copy !== undefined;
  }

  /** The reference's log-probabilities of each next token, [rows, seq - 1] (Model.tokenLogprobs). */
  async logprobs(batch: BatchInput, temperature = 1): Promise<FloatArray> {
    // The owned copy follows the policy's precision (a run may switch it after the copy was made).
    if (this.copy && this.copy.precision !== this.policy.precision) await this.copy.setPrecision(this.policy.precision);
    const model = this.given ?? this.copy;
    if (model) {
      await model.eval();
      return model.tokenLogprobs(batch, { temperature });
    }
    const adapter = this.policy.activeAdapter;
    if (adapter === null) throw new TunekitError('E_STATE', 'the policy lost the adapter its reference switches off');
    const training = this.policy.isTraining;
    await this.policy.setAdapter(null);
    await this.policy.eval();
    try {
      return await this.policy.tokenLogprobs(batch, { temperature });
    } finally {
      await this.policy.setAdapter(adapter);
      await this.policy.train(training);
    }
  }

  dispose(): void {
    this.copy?.dispose();
    this.copy = undefined;
  }
}

/** A frozen, eval-mode copy of a model's current weights and precision (through a temporary checkpoint folder). */
async function frozenCopyOf(model: Model): Promise<Model> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'tunekit-reference-'));
  try {
    await model.savePretrained(dir);
    const copy = await Model.fromPretrained(dir, { task: 'causal-lm', device: model.device, precision: model.precision });
    await copy.setTrainable('all', false);
    return copy;
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}
