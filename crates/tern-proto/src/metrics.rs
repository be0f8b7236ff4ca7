//! Declaring metrics once. [`declare_metrics!`](crate::declare_metrics) turns one list, where
//! each metric has its field, kind, label set, name and help, into a struct of cells (plain
//! `u64`s on a worker's packet path, atomics where threads share them) and a table of
//! [`MetricDef`]s describing those cells. Publishing, folding and the `/metrics` encoding walk
//! the table, so adding a metric is adding one line.
//!
//! Labels are bounded sets ([`LabelSet`]): enums whose variants are the label's values. A metric
//! with labels stores one cell per combination of values, row-major in label order.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// How a metric's value behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (OpenMetrics adds `_total` to its name).
    Counter,
    /// Goes up and down.
    Gauge,
}

/// A label's name and its values, in storage order.
#[derive(Clone, Copy, Debug)]
pub struct Label {
    pub name: &'static str,
    pub values: &'static [&'static str],
}

/// A bounded set of label values: an enum whose variants index a metric's cells.
pub trait LabelSet: Copy {
    /// How many values; the length of `LABEL.values`.
    const COUNT: usize;
    const LABEL: Label;
    /// Position of this value in `LABEL.values`.
    fn index(self) -> usize;
}

/// One declared metric.
#[derive(Clone, Copy, Debug)]
pub struct MetricDef {
    /// The metric family's name (for a counter, without the `_total` the encoding adds).
    pub name: &'static str,
    pub help: &'static str,
    pub kind: Kind,
    /// Empty for a single cell; otherwise one cell per combination of their values.
    pub labels: &'static [Label],
    /// Leave out cells that are zero: for large, mostly empty products such as method × code.
    pub sparse: bool,
}

/// At most this many labels per metric (cells are arrays nested this deep).
pub const MAX_LABELS: usize = 2;

impl MetricDef {
    /// Number of cells: the product of the label value counts.
    pub fn cell_count(&self) -> usize {
        self.labels.iter().map(|l| l.values.len()).product()
    }

    /// The `(label, value)` pairs naming cell `cell`; the first `labels.len()` entries of the
    /// returned array are set.
    pub fn label_values(&self, mut cell: usize) -> [(&'static str, &'static str); MAX_LABELS] {
        let mut pairs = [("", ""); MAX_LABELS];
        for (slot, label) in pairs.iter_mut().zip(self.labels).rev() {
            let count = label.values.len().max(1);
            *slot = (
                label.name,
                label.values.get(cell % count).copied().unwrap_or(""),
            );
            cell /= count;
        }
        pairs
    }

    /// The name as OpenMetrics text shows it: counters end in `_total`.
    pub fn exposed_name(&self) -> String {
        match self.kind {
            Kind::Counter => format!("{}_total", self.name),
            Kind::Gauge => self.name.to_string(),
        }
    }
}

/// A metric cell: a plain integer or an atomic.
pub trait Cell {
    fn get(&self) -> u64;
}

impl Cell for u64 {
    fn get(&self) -> u64 {
        *self
    }
}

impl Cell for AtomicU64 {
    fn get(&self) -> u64 {
        self.load(Relaxed)
    }
}

/// A struct made by [`declare_metrics!`](crate::declare_metrics): its table and its cells.
pub trait MetricSet {
    type Cell: Cell;
    /// The metrics in declaration order.
    const METRICS: &'static [MetricDef];
    /// The cells of `METRICS[metric]`, row-major in label order (empty past the end).
    fn cells(&self, metric: usize) -> &[Self::Cell];
    fn cells_mut(&mut self, metric: usize) -> &mut [Self::Cell];
}

/// Declares a set of metrics once: a struct with one field per metric, and its [`MetricSet`]
/// table. Each entry is
///
/// ```text
/// /// doc comment
/// field: counter|gauge [LabelSet, …] sparse? = "metric_name", "help text";
/// ```
///
/// where the label sets (at most [`MAX_LABELS`]) and `sparse` are optional. A field is a cell,
/// `[cell; A::COUNT]` for one label, `[[cell; B::COUNT]; A::COUNT]` for two. The cell type is
/// either generic (`struct Name<C> { … }`, instantiated with `u64` and `AtomicU64`; `Clone` and
/// `Copy` when the cells are) or fixed (`struct Name(AtomicU64) { … }`). An optional
/// `extra { pub field: Type, … }` block after the struct adds fields that are not metrics. The
/// struct implements `Default` and `Debug` (field types made by a macro cannot be derived for).
#[macro_export]
macro_rules! declare_metrics {
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident<$cell:ident> { $($body:tt)* }
        $(extra { $($extra:tt)* })?
    ) => {
        $crate::declare_metrics!(@emit [$(#[$attr])*] [$vis] $name [$cell] [$cell]
            { $($body)* } { $($($extra)*)? });

        impl<$cell: ::core::marker::Copy> ::core::clone::Clone for $name<$cell> {
            fn clone(&self) -> Self {
                *self
            }
        }

        impl<$cell: ::core::marker::Copy> ::core::marker::Copy for $name<$cell> {}
    };
    (
        $(#[$attr:meta])*
        $vis:vis struct $name:ident($cell:ty) { $($body:tt)* }
        $(extra { $($extra:tt)* })?
    ) => {
        $crate::declare_metrics!(@emit [$(#[$attr])*] [$vis] $name [] [$cell]
            { $($body)* } { $($($extra)*)? });
    };
    (@emit [$($attr:tt)*] [$vis:vis] $name:ident [$($generic:ident)?] [$cell:ty]
        {
            $(
                $(#[$field_attr:meta])*
                $field:ident: $kind:ident $([$($label:ty),+])? $($flag:ident)?
                    = $metric:literal, $help:literal;
            )*
        }
        {
            $( $(#[$extra_attr:meta])* $extra_vis:vis $extra_field:ident: $extra_ty:ty ),* $(,)?
        }
    ) => {
        $($attr)*
        $vis struct $name $(<$generic>)? {
            $(
                $(#[$field_attr])*
                pub $field: $crate::declare_metrics!(@cells $cell $([$($label),+])?),
            )*
            $( $(#[$extra_attr])* $extra_vis $extra_field: $extra_ty, )*
        }

        impl $(<$generic: $crate::metrics::Cell>)? $crate::metrics::MetricSet
            for $name $(<$generic>)?
        {
            type Cell = $cell;
            const METRICS: &'static [$crate::metrics::MetricDef] = &[$(
                $crate::metrics::MetricDef {
                    name: $metric,
                    help: $help,
                    kind: $crate::declare_metrics!(@kind $kind),
                    labels: &[$($(<$label as $crate::metrics::LabelSet>::LABEL),+)?],
                    sparse: $crate::declare_metrics!(@sparse $($flag)?),
                },
            )*];

            fn cells(&self, metric: usize) -> &[$cell] {
                let all = [$($crate::declare_metrics!(@flat self.$field $([$($label),+])?)),*];
                all.get(metric).copied().unwrap_or(&[])
            }

            fn cells_mut(&mut self, metric: usize) -> &mut [$cell] {
                let all = [$($crate::declare_metrics!(@flat_mut self.$field $([$($label),+])?)),*];
                all.into_iter().nth(metric).unwrap_or(&mut [])
            }
        }

        impl $(<$generic: ::core::default::Default>)? ::core::default::Default
            for $name $(<$generic>)?
        {
            fn default() -> Self {
                $name {
                    $( $field: ::core::default::Default::default(), )*
                    $( $extra_field: ::core::default::Default::default(), )*
                }
            }
        }

        impl $(<$generic: ::core::fmt::Debug>)? ::core::fmt::Debug for $name $(<$generic>)? {
            fn fmt(&self, f: &mut ::core::fmt::Formatter<'_>) -> ::core::fmt::Result {
                f.debug_struct(stringify!($name))
                    $( .field(stringify!($field), &self.$field) )*
                    $( .field(stringify!($extra_field), &self.$extra_field) )*
                    .finish()
            }
        }
    };
    (@cells $cell:ty) => { $cell };
    (@cells $cell:ty [$a:ty]) => { [$cell; <$a as $crate::metrics::LabelSet>::COUNT] };
    (@cells $cell:ty [$a:ty, $b:ty]) => {
        [[$cell; <$b as $crate::metrics::LabelSet>::COUNT]; <$a as $crate::metrics::LabelSet>::COUNT]
    };
    (@flat $self:ident.$field:ident) => { ::core::slice::from_ref(&$self.$field) };
    (@flat $self:ident.$field:ident [$a:ty]) => { &$self.$field[..] };
    (@flat $self:ident.$field:ident [$a:ty, $b:ty]) => { $self.$field.as_flattened() };
    (@flat_mut $self:ident.$field:ident) => { ::core::slice::from_mut(&mut $self.$field) };
    (@flat_mut $self:ident.$field:ident [$a:ty]) => { &mut $self.$field[..] };
    (@flat_mut $self:ident.$field:ident [$a:ty, $b:ty]) => { $self.$field.as_flattened_mut() };
    (@kind counter) => { $crate::metrics::Kind::Counter };
    (@kind gauge) => { $crate::metrics::Kind::Gauge };
    (@sparse) => { false };
    (@sparse sparse) => { true };
}

/// Declares a [`LabelSet`] enum: its variants, in order, with the label values they stand for.
#[macro_export]
macro_rules! label_set {
    (
        $(#[$attr:meta])*
        $vis:vis enum $name:ident: $label:literal {
            $( $(#[$variant_attr:meta])* $variant:ident = $value:literal ),* $(,)?
        }
    ) => {
        $(#[$attr])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        $vis enum $name {
            $( $(#[$variant_attr])* $variant, )*
        }

        impl $name {
            /// Every value, in label order.
            pub const ALL: &'static [$name] = &[$($name::$variant),*];
        }

        impl $crate::metrics::LabelSet for $name {
            const COUNT: usize = Self::ALL.len();
            const LABEL: $crate::metrics::Label = $crate::metrics::Label {
                name: $label,
                values: &[$($value),*],
            };
            fn index(self) -> usize {
                self as usize
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    crate::label_set! {
        enum Colour: "colour" { Red = "red", Green = "green" }
    }
    crate::label_set! {
        enum Size: "size" { Small = "s", Medium = "m", Large = "l" }
    }

    crate::declare_metrics! {
        struct Sample<C> {
            plain: counter = "plain", "A counter";
            by_colour: gauge [Colour] = "by_colour", "A gauge by colour";
            by_both: counter [Colour, Size] sparse = "by_both", "A counter by colour and size";
        }
    }

    #[test]
    fn table_and_cells_follow_the_declaration() {
        let mut sample = Sample::<u64> {
            plain: 7,
            ..Default::default()
        };
        sample.by_colour[Colour::Green.index()] = 3;
        sample.by_both[Colour::Green.index()][Size::Medium.index()] = 5;
        let metrics = <Sample<u64> as MetricSet>::METRICS;
        let names: Vec<_> = metrics.iter().map(|m| m.exposed_name()).collect();
        assert_eq!(names, ["plain_total", "by_colour", "by_both_total"]);
        assert_eq!(
            metrics.iter().map(|m| m.sparse).collect::<Vec<_>>(),
            [false, false, true]
        );
        assert_eq!(sample.cells(0), [7]);
        assert_eq!(sample.cells(1), [0, 3]);
        assert_eq!(metrics[2].cell_count(), 6);
        // Row-major: green (1) × medium (1) is cell 1 * 3 + 1.
        let cells = sample.cells(2);
        assert_eq!(cells.len(), 6);
        assert_eq!(cells[4], 5);
        assert_eq!(
            metrics[2].label_values(4),
            [("colour", "green"), ("size", "m")]
        );
        assert_eq!(metrics[1].label_values(1)[0], ("colour", "green"));
        assert!(sample.cells(3).is_empty());
    }
}
