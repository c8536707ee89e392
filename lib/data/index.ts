export { Dataset } from './dataset';
export type { DatasetKind, FieldMap, ReadOptions, Row } from './dataset';
export { BUILTINS, BUILTIN_SPLIT_SEED, builtinSplits, loadSplits } from './builtin';
export type { BuiltinInfo, Splits } from './builtin';
