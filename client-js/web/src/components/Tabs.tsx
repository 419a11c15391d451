/** A row of tabs; `value` is the selected one. */
export function Tabs<T extends string>({
  label,
  tabs,
  value,
  onChange,
}: {
  label: string;
  tabs: readonly (readonly [T, string])[];
  value: T;
  onChange: (t: T) => void;
}) {
  return (
    <div role="tablist" aria-label={label} className="tabs">
      {tabs.map(([t, text]) => (
        <button
          key={t}
          type="button"
          role="tab"
          aria-selected={value === t}
          className={value === t ? 'tab active' : 'tab'}
          onClick={() => onChange(t)}
        >
          {text}
        </button>
      ))}
    </div>
  );
}
