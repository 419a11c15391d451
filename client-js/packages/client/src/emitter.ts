/** A small typed event emitter; a throwing handler does not stop the others. */
export class Emitter<E extends object> {
  private handlers = new Map<keyof E, Set<(value: never) => void>>();

  on<K extends keyof E>(event: K, handler: (value: E[K]) => void): () => void {
    let set = this.handlers.get(event);
    if (!set) {
      set = new Set();
      this.handlers.set(event, set);
    }
    set.add(handler as (value: never) => void);
    return () => {
      set.delete(handler as (value: never) => void);
    };
  }

  emit<K extends keyof E>(event: K, value: E[K]): void {
    const set = this.handlers.get(event);
    if (!set) return;
    for (const h of [...set]) {
      try {
        (h as (value: E[K]) => void)(value);
      } catch (e) {
        // An application bug must not break delivery to other listeners.
        console.error(`stompline: ${String(event)} handler threw`, e);
      }
    }
  }
}
