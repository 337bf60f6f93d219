/** One parameter of a model's flat layout with its initial values (vit.ts, text/*.ts). */
export interface ParamSpec {
  name: string;
  shape: number[];
  decay: boolean;
  /** Initial values: a normal std, or a constant. */
  init: { std: number } | { value: number };
}
