/**
 * Answers remembered by their key, for inputs that come back again and
 * again (client addresses, upstream authorities): at most `max` of them,
 * and when full the memory starts over, so that ever new keys cannot grow
 * it. An input whose computation throws is not remembered.
 *
 * @module
 */

/** `compute`, remembering the answers for up to `max` keys. */
export function boundedMemo<T>(compute: (key: string) => T, max: number): (key: string) => T {
  const known = new Map<string, T>();
  return (key) => {
    if (known.has(key)) return known.get(key) as T;
    const answer = compute(key);
    if (known.size >= max) known.clear();
    known.set(key, answer);
    return answer;
  };
}
