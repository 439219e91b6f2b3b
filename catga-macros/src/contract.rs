//! `#[derive(Command)]` and `#[derive(Event)]` with `#[catga(...)]`: the
//! message contract — subject (checked as a NATS subject), reply type,
//! codec, validation hook, durability.

use proc_macro2::{Span, TokenStream};
use quote::quote;
use syn::{DeriveInput, LitStr, Path, Type};

use crate::attr::{Attr, Errors, set_checked_string, skip_value, unknown_key};
use crate::subject::check_publish_subject;

#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Kind {
    Command,
    Event,
}

impl Kind {
    fn derive(self) -> &'static str {
        match self {
            Kind::Command => "#[derive(Command)]",
            Kind::Event => "#[derive(Event)]",
        }
    }

    fn keys(self) -> &'static [&'static str] {
        match self {
            Kind::Command => &["subject", "reply", "codec", "validate", "durable", "crate"],
            Kind::Event => &["subject", "codec", "validate", "durable", "crate"],
        }
    }

    fn example(self) -> &'static str {
        match self {
            Kind::Command => "#[catga(subject = \"orders.create\", reply = OrderAccepted)]",
            Kind::Event => "#[catga(subject = \"orders.created\")]",
        }
    }
}

struct Contract {
    subject: Option<LitStr>,
    reply: Option<Type>,
    codec: Option<Type>,
    validate: bool,
    durable: bool,
    krate: Path,
}

pub(crate) fn expand(kind: Kind, input: TokenStream) -> TokenStream {
    let input: DeriveInput = match syn::parse2(input) {
        Ok(input) => input,
        Err(e) => return e.to_compile_error(),
    };
    let mut errors = Errors::default();
    let contract = parse(kind, &input, &mut errors);
    // Emit the impls whenever the parts they need parsed, even next to an
    // error, so a bad subject does not also break every handler of the type.
    let impls = generate(kind, &input, &contract);
    let errors = errors.to_compile_errors();
    let out = quote!(#impls #errors);
    crate::debug_print(kind.derive(), &out);
    out
}

fn parse(kind: Kind, input: &DeriveInput, errors: &mut Errors) -> Contract {
    let mut subject = Attr::new("subject");
    let mut reply = Attr::new("reply");
    let mut codec = Attr::new("codec");
    let mut validate = Attr::new("validate");
    let mut durable = Attr::new("durable");
    let mut krate = Attr::new("crate");
    let mut found = false;
    let mut subject_given = false;
    for attr in input.attrs.iter().filter(|a| a.path().is_ident("catga")) {
        found = true;
        let parsed = attr.parse_nested_meta(|meta| {
            let key = &meta.path;
            if key.is_ident("subject") {
                subject_given = true;
                set_checked_string(&meta, "\"orders.create\"", check_publish_subject, &mut subject, errors);
            } else if key.is_ident("reply") && kind == Kind::Command {
                reply.set(key, meta.value()?.parse::<Type>()?, errors);
            } else if key.is_ident("codec") {
                codec.set(key, meta.value()?.parse::<Type>()?, errors);
            } else if key.is_ident("validate") {
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    errors.push(meta.error("`validate` is a flag: write `validate` and implement `catga::Validate`"));
                    skip_value(&meta);
                }
                validate.set(key, (), errors);
            } else if key.is_ident("durable") {
                // One form only: the bare flag. `durable = true` would invite
                // `durable = false`, which says nothing the absence does not.
                if !meta.input.is_empty() && !meta.input.peek(syn::Token![,]) {
                    errors.push(meta.error(
                        "`durable` is a flag: write `durable` (no value) to deliver this message through JetStream, \
                         or leave it out for at-most-once core NATS",
                    ));
                    skip_value(&meta);
                }
                durable.set(key, (), errors);
            } else if key.is_ident("crate") {
                krate.set(key, meta.value()?.parse::<Path>()?, errors);
            } else {
                let what = format!("#[catga] of {}", kind.derive());
                let mut e = unknown_key(&meta, &what, kind.keys());
                if key.is_ident("reply") {
                    e = meta.error("events have no reply; `reply` belongs on #[derive(Command)]");
                }
                errors.push(e);
                skip_value(&meta);
            }
            Ok(())
        });
        if let Err(e) = parsed {
            errors.push(e);
        }
    }
    let ident = &input.ident;
    if !found {
        errors.at(ident, format!("{} needs a contract attribute: {}", kind.derive(), kind.example()));
    } else {
        if !subject_given {
            errors.at(ident, format!("{} needs a subject: {}", kind.derive(), kind.example()));
        }
        if kind == Kind::Command && reply.as_ref().is_none() {
            errors.at(
                ident,
                format!("{} needs a reply type (use `reply = ()` for none): {}", kind.derive(), kind.example()),
            );
        }
    }
    Contract {
        subject: subject.get(),
        reply: reply.get(),
        codec: codec.get(),
        validate: validate.get().is_some(),
        durable: durable.get().is_some(),
        krate: krate.get().unwrap_or_else(|| syn::parse_quote!(::catga)),
    }
}

fn generate(kind: Kind, input: &DeriveInput, c: &Contract) -> TokenStream {
    let Some(subject) = &c.subject else { return TokenStream::new() };
    // An invalid subject still yields an impl (with the error beside it).
    let subject = LitStr::new(&subject.value(), Span::call_site());
    let krate = &c.krate;
    let ident = &input.ident;
    let (impl_generics, ty_generics, where_clause) = input.generics.split_for_impl();
    let codec = c.codec.as_ref().map(|t| quote!(#t)).unwrap_or_else(|| quote!(#krate::Json));
    let validate = c.validate.then(|| {
        quote! {
            fn validate(&self) -> ::core::result::Result<(), #krate::HandlerError> {
                <Self as #krate::Validate>::validate(self)
            }
        }
    });
    let durable = c.durable.then(|| {
        quote!(
            const DURABLE: bool = true;
        )
    });
    let message = quote! {
        #[automatically_derived]
        impl #impl_generics #krate::Message for #ident #ty_generics #where_clause {
            const SUBJECT: &'static str = #subject;
            type Codec = #codec;
            #durable
            #validate
        }
    };
    let specific = match kind {
        Kind::Command => match &c.reply {
            Some(reply) => quote! {
                #[automatically_derived]
                impl #impl_generics #krate::Command for #ident #ty_generics #where_clause {
                    type Reply = #reply;
                }
            },
            None => TokenStream::new(),
        },
        Kind::Event => quote! {
            #[automatically_derived]
            impl #impl_generics #krate::Event for #ident #ty_generics #where_clause {}
        },
    };
    quote!(#message #specific)
}
