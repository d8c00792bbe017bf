# Serial console: no bracketed-paste escapes before the prompt (they break prompt matching).
[ -f ~/.bashrc ] && . ~/.bashrc
bind 'set enable-bracketed-paste off' 2>/dev/null
