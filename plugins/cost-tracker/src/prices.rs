//! The price table: USD per million tokens per model, the built-in default
//! table, the manifest's `prices` parser and the lookup (exact name, else the
//! longest key that is a prefix of the model). Pure logic, no host calls:
//! unit-tested natively with `cargo test -p cost-tracker`.

use std::collections::BTreeMap;
use std::fmt;

use serde_json::Value;

/// One model's list prices, USD per 1,000,000 tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Price {
    /// Prompt tokens not read from or written to a cache.
    pub input: f64,
    /// Completion tokens.
    pub output: f64,
    /// Prompt tokens read from the provider's cache.
    pub cache_read: f64,
    /// Prompt tokens written to the provider's cache.
    pub cache_creation: f64,
}

impl Price {
    const fn new(input: f64, output: f64, cache_read: f64, cache_creation: f64) -> Price {
        Price {
            input,
            output,
            cache_read,
            cache_creation,
        }
    }
}

/// The date the built-in prices were taken.
pub const DEFAULT_PRICES_DATE: &str = "2026-12-03";

/// The built-in table: the providers' standard-tier list prices per 1M
/// tokens (short-context tier where a provider has two; no batch or priority
/// discounts), taken on [`DEFAULT_PRICES_DATE`]. Keys match by exact name,
/// then as the longest prefix, so `gpt-4.1-mini-2025-04-14` is priced as
/// `gpt-4.1-mini` and `claude-sonnet-4-5-20250929` as `claude-sonnet-4`.
///
/// - OpenAI bills no cache writes: `cache_creation` is the input price.
/// - Anthropic's `cache_creation` is the 5-minute cache write (1.25× input).
///   `claude-opus-4` is Opus 4 and 4.1 ($15/$75); Opus 4.5 and 4.6 cost
///   less and have keys of their own, and a later Opus 4.x not listed here
///   is priced as Opus 4 (the higher price: a budget fires early, not late).
/// - Google bills cache storage by the hour, which is not per call:
///   `cache_creation` is the input price.
pub const DEFAULT_PRICES: &[(&str, Price)] = &[
    // OpenAI: input, output, cached input, (no cache-write price).
    ("gpt-4.1", Price::new(2.00, 8.00, 0.50, 2.00)),
    ("gpt-4.1-mini", Price::new(0.40, 1.60, 0.10, 0.40)),
    ("gpt-4.1-nano", Price::new(0.10, 0.40, 0.025, 0.10)),
    ("gpt-4o", Price::new(2.50, 10.00, 1.25, 2.50)),
    ("gpt-4o-mini", Price::new(0.15, 0.60, 0.075, 0.15)),
    ("o3", Price::new(2.00, 8.00, 0.50, 2.00)),
    ("o3-mini", Price::new(1.10, 4.40, 0.55, 1.10)),
    ("o4-mini", Price::new(1.10, 4.40, 0.275, 1.10)),
    ("text-embedding-3-small", Price::new(0.02, 0.0, 0.02, 0.02)),
    ("text-embedding-3-large", Price::new(0.13, 0.0, 0.13, 0.13)),
    // Anthropic: input, output, cache hits, 5-minute cache writes.
    ("claude-opus-4", Price::new(15.00, 75.00, 1.50, 18.75)),
    ("claude-opus-4-5", Price::new(5.00, 25.00, 0.50, 6.25)),
    ("claude-opus-4-6", Price::new(5.00, 25.00, 0.50, 6.25)),
    ("claude-sonnet-4", Price::new(3.00, 15.00, 0.30, 3.75)),
    ("claude-haiku-4", Price::new(1.00, 5.00, 0.10, 1.25)),
    ("claude-3-7-sonnet", Price::new(3.00, 15.00, 0.30, 3.75)),
    ("claude-3-5-haiku", Price::new(0.80, 4.00, 0.08, 1.00)),
    // Google: input, output, context-cache reads (prompts up to 200k tokens).
    ("gemini-2.5-pro", Price::new(1.25, 10.00, 0.125, 1.25)),
    ("gemini-2.5-flash", Price::new(0.30, 2.50, 0.03, 0.30)),
    ("gemini-2.5-flash-lite", Price::new(0.10, 0.40, 0.01, 0.10)),
];

/// A manifest `prices` value that is not a price table, naming what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub enum PriceTableError {
    /// The text is not JSON.
    NotJson(String),
    /// The JSON is not an object of model → prices.
    NotAnObject,
    /// A model key is empty.
    EmptyModel,
    /// A model's entry is not an object.
    NotAnEntry { model: String },
    /// A model's entry lacks a price that has no default (`input`, `output`).
    Missing { model: String, field: &'static str },
    /// A price is not a finite, non-negative number.
    BadPrice {
        model: String,
        field: String,
        value: String,
    },
    /// An entry has a field that is not a price (a typo, say).
    UnknownField { model: String, field: String },
}

impl fmt::Display for PriceTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PriceTableError::NotJson(e) => write!(f, "not JSON: {e}"),
            PriceTableError::NotAnObject => {
                f.write_str(r#"not a JSON object of model → prices, like {"gpt-4.1": {"input": 2.0, "output": 8.0}}"#)
            }
            PriceTableError::EmptyModel => f.write_str("a model name is empty"),
            PriceTableError::NotAnEntry { model } => write!(
                f,
                r#"model `{model}`: not an object of prices, like {{"input": 2.0, "output": 8.0}}"#
            ),
            PriceTableError::Missing { model, field } => write!(f, "model `{model}`: no `{field}` price"),
            PriceTableError::BadPrice { model, field, value } => write!(
                f,
                "model `{model}`: `{field}` = {value} is not a non-negative number of USD per 1M tokens"
            ),
            PriceTableError::UnknownField { model, field } => write!(
                f,
                "model `{model}`: unknown field `{field}` (input, output, cache_read, cache_creation)"
            ),
        }
    }
}

impl std::error::Error for PriceTableError {}

/// Model → prices, looked up by exact name, then by the longest key that is
/// a prefix of the model.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PriceTable {
    entries: BTreeMap<String, Price>,
}

impl PriceTable {
    /// The built-in table, [`DEFAULT_PRICES`].
    pub fn builtin() -> PriceTable {
        PriceTable {
            entries: DEFAULT_PRICES.iter().map(|(k, p)| ((*k).to_owned(), *p)).collect(),
        }
    }

    /// Parses the manifest's `prices`: a JSON object whose keys are model
    /// names (or prefixes) and whose values hold `input` and `output`, and
    /// optionally `cache_read` and `cache_creation` (both default to
    /// `input`), in USD per 1M tokens.
    ///
    /// # Errors
    /// A [`PriceTableError`] naming the model and field at fault.
    pub fn parse(text: &str) -> Result<PriceTable, PriceTableError> {
        let value: Value = serde_json::from_str(text).map_err(|e| PriceTableError::NotJson(e.to_string()))?;
        let Value::Object(models) = value else {
            return Err(PriceTableError::NotAnObject);
        };
        let mut entries = BTreeMap::new();
        for (model, entry) in models {
            if model.trim().is_empty() {
                return Err(PriceTableError::EmptyModel);
            }
            let Value::Object(fields) = entry else {
                return Err(PriceTableError::NotAnEntry { model });
            };
            if let Some(field) = fields
                .keys()
                .find(|k| !matches!(k.as_str(), "input" | "output" | "cache_read" | "cache_creation"))
            {
                return Err(PriceTableError::UnknownField {
                    model,
                    field: field.clone(),
                });
            }
            let price = |field: &'static str| -> Result<Option<f64>, PriceTableError> {
                match fields.get(field) {
                    None => Ok(None),
                    Some(v) => match v.as_f64() {
                        Some(n) if n.is_finite() && n >= 0.0 => Ok(Some(n)),
                        _ => Err(PriceTableError::BadPrice {
                            model: model.clone(),
                            field: field.to_owned(),
                            value: v.to_string(),
                        }),
                    },
                }
            };
            let required = |field: &'static str| {
                price(field)?.ok_or_else(|| PriceTableError::Missing {
                    model: model.clone(),
                    field,
                })
            };
            let input = required("input")?;
            let output = required("output")?;
            let cache_read = price("cache_read")?.unwrap_or(input);
            let cache_creation = price("cache_creation")?.unwrap_or(input);
            entries.insert(model, Price::new(input, output, cache_read, cache_creation));
        }
        Ok(PriceTable { entries })
    }

    /// This table with `other`'s entries added, replacing those of the same key.
    pub fn extended_with(mut self, other: PriceTable) -> PriceTable {
        self.entries.extend(other.entries);
        self
    }

    /// How many models (keys) it prices.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it prices nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The entry for `model`: its exact key, else the longest key that is a
    /// prefix of it. Returns the key used and its prices.
    pub fn lookup(&self, model: &str) -> Option<(&str, &Price)> {
        if let Some((key, price)) = self.entries.get_key_value(model) {
            return Some((key, price));
        }
        self.entries
            .iter()
            .filter(|(key, _)| model.starts_with(key.as_str()))
            .max_by_key(|(key, _)| key.len())
            .map(|(key, price)| (key.as_str(), price))
    }
}

/// A call's token counts, as the event reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub cache_read: u64,
    pub cache_creation: u64,
}

/// The USD cost of a call at `price`.
///
/// Cache-read and cache-creation tokens are part of the prompt tokens (the
/// OpenTelemetry GenAI conventions, OpenAI and Gemini count them so): they
/// are priced at their own rates and the rest of the prompt at the input
/// rate. When they add up to more than the prompt, the producer counted them
/// apart from it (as Anthropic's API does), and the whole prompt is priced
/// at the input rate.
pub fn cost_usd(price: &Price, tokens: &Tokens) -> f64 {
    let cached = tokens.cache_read.saturating_add(tokens.cache_creation);
    let uncached = if cached <= tokens.prompt {
        tokens.prompt - cached
    } else {
        tokens.prompt
    };
    // Sum the products, then divide once: integer token counts times
    // dyadic prices stay exact, and the result is the correctly rounded one.
    let micro = uncached as f64 * price.input
        + tokens.cache_read as f64 * price.cache_read
        + tokens.cache_creation as f64 * price.cache_creation
        + tokens.completion as f64 * price.output;
    micro / 1_000_000.0
}

/// The table entry that prices a call: that of `model`, else that of
/// `request_model` (a deployment name in `model` may hide the real one).
/// Returns the key used and its prices.
pub fn price_for<'t>(table: &'t PriceTable, model: &str, request_model: Option<&str>) -> Option<(&'t str, &'t Price)> {
    table
        .lookup(model)
        .or_else(|| request_model.and_then(|m| table.lookup(m)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_table_matches_exact_names_then_the_longest_prefix() {
        let table = PriceTable::builtin();
        let key = |model: &str| table.lookup(model).map(|(k, _)| k.to_owned());
        assert_eq!(key("gpt-4.1").as_deref(), Some("gpt-4.1"));
        assert_eq!(key("gpt-4.1-mini-2025-04-14").as_deref(), Some("gpt-4.1-mini"));
        assert_eq!(key("gpt-4.1-2025-04-14").as_deref(), Some("gpt-4.1"));
        assert_eq!(key("gpt-4o-2024-08-06").as_deref(), Some("gpt-4o"));
        assert_eq!(key("gpt-4o-mini-2024-07-18").as_deref(), Some("gpt-4o-mini"));
        assert_eq!(key("o3-2025-04-16").as_deref(), Some("o3"));
        assert_eq!(key("o3-mini-2025-01-31").as_deref(), Some("o3-mini"));
        assert_eq!(key("claude-opus-4-1-20250805").as_deref(), Some("claude-opus-4"));
        assert_eq!(key("claude-opus-4-5-20251101").as_deref(), Some("claude-opus-4-5"));
        assert_eq!(key("claude-sonnet-4-5-20250929").as_deref(), Some("claude-sonnet-4"));
        assert_eq!(key("claude-haiku-4-5-20251001").as_deref(), Some("claude-haiku-4"));
        assert_eq!(key("gemini-2.5-flash-lite").as_deref(), Some("gemini-2.5-flash-lite"));
        assert_eq!(
            key("gemini-2.5-flash-preview-05-20").as_deref(),
            Some("gemini-2.5-flash")
        );
        assert_eq!(key("gemini-2.5-pro").as_deref(), Some("gemini-2.5-pro"));
        // No key is a prefix: not priced.
        assert_eq!(key("llama-3.1-70b"), None);
        assert_eq!(key("gpt-4"), None, "a shorter name is not matched by a longer key");
        assert_eq!(key(""), None);
        assert!(PriceTable::builtin().len() >= 12);
    }

    #[test]
    fn every_builtin_price_is_a_sane_list_price() {
        for (model, p) in DEFAULT_PRICES {
            for v in [p.input, p.output, p.cache_read, p.cache_creation] {
                assert!(v.is_finite() && (0.0..=200.0).contains(&v), "{model}: {p:?}");
            }
            assert!(
                p.cache_read <= p.input,
                "{model}: a cache read costs at most an input token"
            );
        }
        let mut keys: Vec<&str> = DEFAULT_PRICES.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), DEFAULT_PRICES.len(), "keys are distinct");
    }

    #[test]
    fn a_manifest_table_parses_with_defaults_for_the_cache_prices() {
        let table = PriceTable::parse(
            r#"{"acme-1": {"input": 1.5, "output": 6, "cache_read": 0.25},
                "gpt-4.1-mini": {"input": 0.5, "output": 2, "cache_read": 0.125, "cache_creation": 0.75}}"#,
        )
        .unwrap();
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.lookup("acme-1-large"),
            Some(("acme-1", &Price::new(1.5, 6.0, 0.25, 1.5)))
        );
        let merged = PriceTable::builtin().extended_with(table);
        assert_eq!(merged.len(), DEFAULT_PRICES.len() + 1, "extends the default table");
        assert_eq!(
            merged.lookup("gpt-4.1-mini-2025-04-14"),
            Some(("gpt-4.1-mini", &Price::new(0.5, 2.0, 0.125, 0.75))),
            "and replaces its entry of the same key"
        );
        assert_eq!(merged.lookup("gpt-4o").map(|(k, _)| k), Some("gpt-4o"));
        assert_eq!(PriceTable::parse("{}").unwrap(), PriceTable::default());
    }

    #[test]
    fn a_malformed_table_is_refused_naming_the_model_and_field() {
        let err = |text: &str| PriceTable::parse(text).unwrap_err();
        assert!(matches!(err("{oops"), PriceTableError::NotJson(_)));
        assert_eq!(err("[1, 2]"), PriceTableError::NotAnObject);
        assert_eq!(err(r#""gpt-4o""#), PriceTableError::NotAnObject);
        assert_eq!(err(r#"{" ": {"input": 1, "output": 2}}"#), PriceTableError::EmptyModel);
        assert_eq!(err(r#"{"m": 2.5}"#), PriceTableError::NotAnEntry { model: "m".into() });
        assert_eq!(
            err(r#"{"m": {"input": 1}}"#),
            PriceTableError::Missing {
                model: "m".into(),
                field: "output"
            }
        );
        assert_eq!(
            err(r#"{"m": {"input": -1, "output": 2}}"#),
            PriceTableError::BadPrice {
                model: "m".into(),
                field: "input".into(),
                value: "-1".into()
            }
        );
        assert_eq!(
            err(r#"{"m": {"input": 1, "output": "2"}}"#),
            PriceTableError::BadPrice {
                model: "m".into(),
                field: "output".into(),
                value: "\"2\"".into()
            }
        );
        assert_eq!(
            err(r#"{"m": {"input": 1, "output": 2, "cache_read": null}}"#),
            PriceTableError::BadPrice {
                model: "m".into(),
                field: "cache_read".into(),
                value: "null".into()
            }
        );
        assert_eq!(
            err(r#"{"m": {"inptu": 1, "output": 2}}"#),
            PriceTableError::UnknownField {
                model: "m".into(),
                field: "inptu".into()
            }
        );
        // The messages name the model and the field.
        let text = err(r#"{"gpt-x": {"input": 1, "output": -3}}"#).to_string();
        assert!(
            text.contains("`gpt-x`") && text.contains("`output`") && text.contains("-3"),
            "{text}"
        );
        assert!(err("{oops").to_string().starts_with("not JSON: "));
    }

    #[test]
    fn cache_tokens_are_part_of_the_prompt_and_priced_at_their_rates() {
        let p = Price::new(2.0, 8.0, 0.5, 2.5);
        let t = |prompt, completion, cache_read, cache_creation| Tokens {
            prompt,
            completion,
            cache_read,
            cache_creation,
        };
        // 1000 × 2 + 500 × 8 = 6000 µ$.
        assert_eq!(cost_usd(&p, &t(1000, 500, 0, 0)), 0.006);
        // 600 uncached × 2 + 400 cache reads × 0.5 + 500 × 8 = 5400 µ$.
        assert_eq!(cost_usd(&p, &t(1000, 500, 400, 0)), 0.0054);
        // 300 uncached × 2 + 400 × 0.5 + 300 × 2.5 + 0 = 1550 µ$.
        assert_eq!(cost_usd(&p, &t(1000, 0, 400, 300)), 0.00155);
        // Cache tokens reported apart from the prompt (more than it): the
        // prompt is all uncached. 100 × 2 + 5000 × 0.5 + 10 × 8 = 2780 µ$.
        assert_eq!(cost_usd(&p, &t(100, 10, 5000, 0)), 0.00278);
        assert_eq!(cost_usd(&p, &Tokens::default()), 0.0);
        // Absurdly large counts stay finite.
        assert!(cost_usd(&p, &t(u64::MAX, u64::MAX, u64::MAX, u64::MAX)).is_finite());
    }

    #[test]
    fn the_request_model_prices_a_call_whose_model_is_in_no_table() {
        let table = PriceTable::builtin();
        assert_eq!(
            price_for(&table, "my-azure-deployment", Some("gpt-4o")).map(|(k, _)| k),
            Some("gpt-4o")
        );
        assert_eq!(
            price_for(&table, "gpt-4.1-mini", Some("gpt-4o")).map(|(k, _)| k),
            Some("gpt-4.1-mini"),
            "the model first"
        );
        assert_eq!(price_for(&table, "nope", None), None);
        assert_eq!(price_for(&table, "nope", Some("nope-either")), None);
    }
}
